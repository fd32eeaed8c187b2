"""The precision names of the flags (`hyvideo.choices.PRECISION_NAMES`) as torch dtypes.

Apart from `hyvideo.choices` so that the flag vocabulary, and with it the parsing of the command line, does not
import torch: a mistyped flag is reported in a fraction of a second instead of after torch's import.
"""

from __future__ import annotations

import torch

from hyvideo.choices import PRECISION_NAMES

# Precision name -> the dtype every stage (text encoders, DiT, VAE) computes in
PRECISIONS: dict[str, torch.dtype] = dict(
    zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True)
)
