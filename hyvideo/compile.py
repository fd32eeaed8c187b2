"""Regional `torch.compile` of the DiT (`--compile`): each transformer block is compiled in place.

Compiling the repeated blocks instead of the whole model keeps compilation short: all double blocks share one
compiled graph and all single blocks another (their parameters are graph inputs), and the embedding, the token
refiner and the final layer stay eager. The first forward pays the compilation (tens of seconds on a CPU, needs a
C++ compiler there); a new token count (another size, or a negative prompt of another length) compiles once more,
with dynamic shapes from then on. Parameter names and the state dict are unchanged (`nn.Module.compile`).
"""

from __future__ import annotations

from loguru import logger
from torch import nn

from hyvideo.modules.dit import HYVideoDiT


def compile_blocks(model: HYVideoDiT, backend: str = "inductor", **options: object) -> HYVideoDiT:
    """Compile every double and single block of `model` in place; returns the model. `options` go to torch.compile."""
    blocks: list[nn.Module] = [*model.double_blocks, *model.single_blocks]
    for block in blocks:
        block.compile(backend=backend, **options)
    logger.info(f"torch.compile ({backend}): {len(blocks)} transformer blocks; the first step includes compilation")
    return model
