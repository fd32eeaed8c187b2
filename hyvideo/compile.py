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


def compile_blocks(
    model: HYVideoDiT, backend: str = "inductor", mode: str = "default", **options: object
) -> HYVideoDiT:
    """Compile every double and single block of `model` in place; returns the model. `mode` and `options` go to
    torch.compile. mode "reduce-overhead" records each block's kernels once per shape as a CUDA graph and replays
    it (no per-kernel launch cost; the parameters must stay at fixed device addresses, so not with block offload).
    On the CPU inductor skips the graphs and the mode compiles like the default one."""
    blocks: list[nn.Module] = [*model.double_blocks, *model.single_blocks]
    streamer = getattr(model, "_offload", None)  # block offload's hooks run around each block: keep them eager
    if streamer is not None:
        streamer.keep_eager()
    kwargs = {} if mode == "default" else {"mode": mode}
    for block in blocks:
        block.compile(backend=backend, **kwargs, **options)
    logger.info(
        f"torch.compile ({backend}, mode {mode}): {len(blocks)} transformer blocks; the first step includes compilation"
    )
    return model
