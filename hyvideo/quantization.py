"""fp8 (e4m3fn) weight storage for the DiT's block Linear layers, applied to a built model from outside.

Which layers: every `nn.Linear` inside `double_blocks` and `single_blocks` (qkv, proj, MLP and the modulation
Linears), as in the official release; embedders, the token refiner and the final layer stay in the compute dtype.

Storage: W ~= W8 * s, W8 = clamp(W / s, ±448) rounded to float8_e4m3fn, with
    per-layer ("tensor") scales   s = max|W| / 448                (official `_fp8_map.pt`, one scalar per layer)
    per-channel ("channel")       s_o = max_i |W_oi| / 448, shape (out, 1)
Measured (docs/BENCHMARKS.md "fp8 accuracy"): both give the same error (e4m3 is a floating format, so a scale only
matters once rows fall ~14 binades below the layer maximum). Default: per layer, the official format, which also
keeps the fp8-compute path on the fused scalar-scale kernel. Per-channel stays available for checkpoints with
extreme row spreads.
Compute, default: y = x @ (W8.to(dtype) * s).T + b, dequantised per layer per call (peak one layer's float weight).
Compute, `fp8_compute=True` (CUDA sm89+): x is quantised per tensor (s_x = max|x| / 448) and
    y = (x8 @ W8.T) * s_x * s + b   via `torch._scaled_mm`.

Boundaries: `quantize_dit(model)` takes a float model (merge LoRA weights before calling it); `quantize_state_dict`
does the same on a float state dict. `load_fp8_official` reads the official `mp_rank_00_model_states_fp8.pt` +
`_fp8_map.pt` pair; `save_fp8_official` writes that pair from a float model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hyvideo import offload
from hyvideo.checkpoints.common import CheckpointError, StateDict, as_state_dict, assign_state_dict, load_torch_file
from hyvideo.checkpoints.dit import build_dit, load_dit
from hyvideo.config import DiTConfig
from hyvideo.hardware import scaled_mm_available  # noqa: F401  (importable from here too)
from hyvideo.modules.dit import HYVideoDiT

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
BLOCK_PREFIXES = ("double_blocks.", "single_blocks.")
OFFICIAL_FP8_FILE = "mp_rank_00_model_states_fp8.pt"
OFFICIAL_FP8_MAP_FILE = "mp_rank_00_model_states_fp8_map.pt"
Granularity = Literal["tensor", "channel"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
DEFAULT_GRANULARITY: Granularity = "tensor"


# ---------------------------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------------------------
def fp8_scale(w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """float32 scale s with max|W / s| = 448: shape () per tensor, (out, 1) per output channel."""
    a = w.detach().abs()
    amax = a.amax() if granularity == "tensor" else a.amax(dim=1, keepdim=True)
    return (amax.float() / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)  # all-zero rows keep scale > 0


def quantize_weight(
    w: torch.Tensor, granularity: Granularity = DEFAULT_GRANULARITY
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W8 float8_e4m3fn, s float32) with W ~= W8 * s; W (out, in) in any float dtype."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    s = fp8_scale(w, granularity)
    return (w.float() / s).clamp_(-FP8_MAX, FP8_MAX).to(FP8), s


def dequantize_weight(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W8.to(dtype) * s (cast first, then scale in `dtype`, as the official forward does)."""
    return w8.to(dtype) * scale.to(dtype)


def fp8_matmul(
    x: torch.Tensor,
    w8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    mm: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """y = (x8 @ W8.T) * s_x * s_w + b with x quantised per tensor; x (..., in), W8 (out, in) -> (..., out).

    `mm` is `torch._scaled_mm` by default (tests pass strict stand-ins). The call keeps CUDA's contract for every
    compute dtype: per-tensor float32 scalar scales, W8.T column-major, output in x's dtype; the kernel adds the bias
    only in the output's dtype and never for a float32 output, so for fp32 (and a per-channel s_w, applied after the
    product in fp32) the bias is added afterwards.
    """
    mm = mm or torch._scaled_mm
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)  # (M, in)
    x_scale = (x2.detach().abs().amax().float() / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    x8 = (x2.float() / x_scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    if w_scale.numel() == 1:
        fused = bias is not None and x.dtype != torch.float32  # the kernel's bias: bf16/fp16 output only
        b = bias.to(x.dtype) if fused else None
        y = mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.reshape(()).float(), bias=b, out_dtype=x.dtype)
        if bias is not None and not fused:
            y = y + bias.to(y.dtype)
    else:
        one = torch.ones((), device=x.device, dtype=torch.float32)
        y = mm(x8, w8.t(), scale_a=x_scale, scale_b=one, out_dtype=torch.float32)  # (M, out)
        y = y * w_scale.reshape(1, -1).float()
        y = (y if bias is None else y + bias.float()).to(x.dtype)
    return y.reshape(*lead, w8.shape[0])


def scaled_mm_shapes_ok(in_features: int, out_features: int) -> bool:
    """`torch._scaled_mm` on CUDA needs both dimensions of the weight to be multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0


def emulated_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`torch._scaled_mm`'s contract in fp32: (a.float() @ b.float()) * scale_a * scale_b + bias, cast to out_dtype."""
    y = (a.float() @ b.float()) * scale_a.float() * scale_b.float()
    return (y if bias is None else y + bias.float()).to(out_dtype)


# ---------------------------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------------------------
class FP8Linear(nn.Module):
    """A Linear whose weight is stored as float8_e4m3fn with a float32 scale; state-dict keys = nn.Linear's.

    `scale` is a non-persistent buffer, so the state dict holds exactly the official keys (weight, bias) and the
    scales travel in the separate map file.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scale_shape: tuple[int, ...] = ()):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.register_buffer("scale", torch.ones(scale_shape, dtype=torch.float32), persistent=False)
        self.fp8_compute = False  # use torch._scaled_mm (set by `enable_fp8_compute`)

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = DEFAULT_GRANULARITY) -> FP8Linear:
        w8, s = quantize_weight(linear.weight, granularity)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, tuple(s.shape))
        layer.weight = nn.Parameter(w8, requires_grad=False)
        layer.scale = s
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return layer

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FP8Linear:
        """`.to(dtype)`, `.half()` etc. move fp8 weights and fp32 scales but never cast them (no float copy)."""
        device = fn(torch.empty(0, device=self.weight.device)).device  # where fn sends tensors
        weight, scale = self._parameters.pop("weight"), self._buffers.pop("scale")
        try:
            super()._apply(fn, recurse)  # bias (and nothing else)
        finally:
            bias = self._parameters.pop("bias", None)
            if weight.device != device:
                weight = nn.Parameter(weight.data.to(device), requires_grad=False)
            self._parameters["weight"], self._parameters["bias"] = weight, bias
            self._buffers["scale"] = scale.to(device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.fp8_compute:
            return fp8_matmul(x, self.weight, self.scale, bias)
        return F.linear(x, dequantize_weight(self.weight, self.scale, x.dtype), bias)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.scale.numel() == 1 else "per-channel"
        return f"in={self.in_features}, out={self.out_features}, fp8 e4m3fn, {kind} scale"


# ---------------------------------------------------------------------------------------------------------------
# Whole-model conversion
# ---------------------------------------------------------------------------------------------------------------
def fp8_layer_names(model: nn.Module) -> list[str]:
    """Module names of the Linear layers stored in fp8: every Linear (or FP8Linear) under the DiT blocks."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | FP8Linear) and name.startswith(BLOCK_PREFIXES)
    ]


def _set(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def quantize_dit(
    model: nn.Module, granularity: Granularity = DEFAULT_GRANULARITY, *, drop_pages: bool = False
) -> nn.Module:
    """Replace the block Linears of a float DiT by FP8Linear, layer by layer (peak: one layer's fp32 copy).

    The float weights are released as each layer is converted. Merge LoRA or other weight edits before this call.
    `drop_pages=True` (only for weights nothing else references, e.g. just read from a memory-mapped file) also
    returns each float weight's memory pages to the system at once, so host RSS never holds the whole float file.
    """
    for name in fp8_layer_names(model):
        linear = model.get_submodule(name)
        if isinstance(linear, nn.Linear):
            _set(model, name, FP8Linear.from_linear(linear, granularity))
            if drop_pages:
                offload.drop_pages(linear.weight)  # only pages still equal to the file are dropped
    return model


def quantize_state_dict(
    sd: dict[str, torch.Tensor], layers: Iterable[str], granularity: Granularity = DEFAULT_GRANULARITY
) -> dict[str, torch.Tensor]:
    """In place: `{layer}.weight` -> fp8 for each layer name; returns the scale map {layer: scale}."""
    scales = {}
    for name in layers:
        sd[f"{name}.weight"], scales[name] = quantize_weight(sd[f"{name}.weight"], granularity)
    return scales


def fp8_structure(model: nn.Module, scales: Mapping[str, torch.Tensor]) -> nn.Module:
    """Swap the block Linears of a meta-built DiT for empty FP8Linear shells (scale shapes from `scales`)."""
    for name in fp8_layer_names(model):
        linear = model.get_submodule(name)
        if isinstance(linear, nn.Linear):
            shape = tuple(scales[name].shape) if name in scales else ()
            with torch.device("meta"):
                _set(model, name, FP8Linear(linear.in_features, linear.out_features, linear.bias is not None, shape))
    return model


def set_scales(model: nn.Module, scales: Mapping[str, torch.Tensor]) -> None:
    """Install the scale of every FP8Linear from the map; the map must name exactly the fp8 layers."""
    names = fp8_layer_names(model)
    missing, extra = sorted(set(names) - set(scales)), sorted(set(scales) - set(names))
    if missing or extra:
        raise CheckpointError(f"fp8 scale map: missing layers {missing[:5]}, unexpected entries {extra[:5]}")
    for name in names:
        layer = model.get_submodule(name)
        s = scales[name].float()
        if s.numel() == layer.out_features and s.numel() > 1:
            s = s.reshape(-1, 1)  # (out,) or (out, 1): per output channel
        elif s.numel() == 1:
            s = s.reshape(())
        else:
            raise CheckpointError(f"fp8 scale map: {name} scale has shape {tuple(s.shape)}; expected () or (out, 1)")
        layer.scale = s.to(layer.weight.device)


def enable_fp8_compute(model: nn.Module, enabled: bool = True) -> int:
    """Switch every FP8Linear whose shape the kernel takes (`scaled_mm_shapes_ok`) to the `torch._scaled_mm` path;
    others keep the dequantising path. Returns how many layers were switched."""
    layers = [
        m for m in model.modules() if isinstance(m, FP8Linear) and scaled_mm_shapes_ok(m.in_features, m.out_features)
    ]
    for m in layers:
        m.fp8_compute = enabled
    return len(layers)


def fp8_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes held in fp8 tensors, bytes held in all parameters and buffers) of a model."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() for t in tensors if t.dtype == FP8), sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------------------------
# The official file pair
# ---------------------------------------------------------------------------------------------------------------
def fp8_map_path(weights: str | Path) -> Path:
    """The scale map beside an fp8 weight file: `<name>.pt` -> `<name>_map.pt` (the official naming rule)."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".pt") + "_map.pt")


def is_fp8_file(weights: str | Path) -> bool:
    """An fp8 weight file: its name ends in `_fp8.pt` or its scale map sits beside it."""
    weights = Path(weights)
    return weights.is_file() and (weights.name.endswith("_fp8.pt") or fp8_map_path(weights).is_file())


def read_fp8_official(weights: str | Path, load_key: str = "module") -> tuple[StateDict, dict[str, torch.Tensor]]:
    """(state dict with fp8 block weights, {layer: scale}) from the official pair; weights_only, mmap."""
    weights = Path(weights)
    map_file = fp8_map_path(weights)
    if not map_file.is_file():
        raise CheckpointError(f"{weights}: fp8 weights need their scale map {map_file.name} beside them")
    sd = as_state_dict(load_torch_file(weights), weights, load_key)
    scales = load_torch_file(map_file)
    if not isinstance(scales, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in scales.items()
    ):
        raise CheckpointError(f"{map_file}: expected a dict {{layer name: scale tensor}}")
    return sd, dict(scales)


def save_fp8_official(
    model: nn.Module,
    folder: str | Path,
    load_key: str = "module",
    granularity: Granularity = "tensor",
) -> Path:
    """Write `folder/mp_rank_00_model_states_fp8.pt` ({load_key: sd}, block Linear weights fp8) and its `_map.pt`.

    The official map holds one scale per layer; "channel" writes (out, 1) scales that only our loader reads.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    scales = quantize_state_dict(sd, fp8_layer_names(model), granularity)
    path = folder / OFFICIAL_FP8_FILE
    torch.save({load_key: sd}, path)
    torch.save(scales, fp8_map_path(path))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Loading a DiT with fp8 block weights
# ---------------------------------------------------------------------------------------------------------------
def load_dit_fp8(
    path: str | Path,
    cfg: DiTConfig,
    *,
    load_key: str = "module",
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    granularity: Granularity = DEFAULT_GRANULARITY,
) -> HYVideoDiT:
    """A DiT whose block Linears hold fp8 weights: the official fp8 pair as stored, or any float checkpoint
    quantized while loading (layer by layer, so host RAM never holds a second float copy). Other weights are cast
    to `dtype`; everything moves to `device`."""
    if is_fp8_file(path):
        sd, scales = read_fp8_official(path, load_key)
        model = fp8_structure(build_dit(cfg), scales)
        for name in fp8_layer_names(model):
            key = f"{name}.weight"
            if key in sd and sd[key].dtype != FP8:  # fp8 values saved in a wider dtype: exact cast
                sd[key] = sd[key].to(FP8)
        assign_state_dict(model, sd, f"fp8 DiT {path}")
        del sd
        set_scales(model, scales)
    else:
        model = quantize_dit(load_dit(path, cfg, load_key=load_key), granularity, drop_pages=True)
    model.to(device=device, dtype=dtype)
    if torch.device(device).type == "cpu":  # release the memory-mapped file: copy what still points into it
        for t in (*model.parameters(), *model.buffers()):
            if t.dtype != FP8:
                t.data = t.data.clone()
    return model.eval().requires_grad_(False)
