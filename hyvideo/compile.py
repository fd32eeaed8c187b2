"""Regional `torch.compile` of the DiT (`--compile`): the transformer blocks are compiled, the rest stays eager.

Compiling the repeated blocks instead of the whole model keeps compilation short: all double blocks share one
compiled graph and all single blocks another (their parameters are graph inputs), and the embedding, the token
refiner and the final layer stay eager. The first forward pays the compilation (tens of seconds on a CPU, needs a
C++ compiler there); a new token count (another size, or a negative prompt of another length) compiles once more,
with dynamic shapes from then on. Parameter names and the state dict are unchanged (`nn.Module.compile`).

The CUDA-graph modes ("reduce-overhead", "max-autotune") need one compiled region per model call instead: a
CUDA-graph tree starts a new generation each time a compiled function is entered, and a new generation frees the
outputs of the previous one, which with one region per block are the next block's inputs (torch 2.13,
`torch/_inductor/cudagraph_trees.py`: `GenerationTracker.generation` is bumped on every entry into a compiled
function; pytorch issues 152887 and 160281). For those modes the whole block loop (`run_blocks`, which every
caller goes through: the forward, sequence parallelism, TeaCache) is compiled as one region, so one call is one
generation: its output is consumed (final layer, gather, cached residual) before the next call replaces it.
"""

from __future__ import annotations

import torch
from loguru import logger
from torch import nn

from hyvideo.modules.dit import HYVideoDiT


def uses_cuda_graphs(mode: str, options: dict[str, object] | None = None) -> bool:
    """Whether torch.compile with this `mode` (and inductor `options`) replays CUDA graphs."""
    chosen = {**torch._inductor.list_mode_options(mode), **(options or {})}
    return bool(chosen.get("triton.cudagraphs", False))


def compile_region(mode: str, options: dict[str, object] | None = None) -> str:
    """What one compiled region covers: "blocks" (each block its own region) or "loop" (the whole block loop, for
    the CUDA-graph modes: see the module docstring)."""
    return "loop" if uses_cuda_graphs(mode, options) else "blocks"


def compile_blocks(
    model: HYVideoDiT, backend: str = "inductor", mode: str = "default", **options: object
) -> HYVideoDiT:
    """Compile `model`'s blocks in place (per block, or the block loop as one region in the CUDA-graph modes);
    returns the model. `mode` and `options` go to torch.compile. On the CPU inductor skips the graphs and the
    CUDA-graph modes compile like the default one (still as one region)."""
    blocks: list[nn.Module] = [*model.double_blocks, *model.single_blocks]
    offload = getattr(model, "_offload", None)  # offload hooks are host-side memory management: keep them eager
    if offload is not None:
        offload.keep_eager()
    kwargs = {} if mode == "default" else {"mode": mode}
    region = compile_region(mode, options.get("options"))  # type: ignore[arg-type]
    if region == "loop":
        # an instance attribute shadows the method: every caller of model.run_blocks gets the compiled loop
        model.run_blocks = torch.compile(model.run_blocks, backend=backend, **kwargs, **options)
        what = f"the loop of {len(blocks)} transformer blocks as one region (CUDA graphs)"
    else:
        for block in blocks:
            block.compile(backend=backend, **kwargs, **options)
        what = f"{len(blocks)} transformer blocks"
    logger.info(f"torch.compile ({backend}, mode {mode}): {what}; the first step includes compilation")
    return model
