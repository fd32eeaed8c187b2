"""Causal 3D VAE 884-16c-hy: 4x causal time compression, 8x8 space, 16 latent channels (docs/DESIGN.md §3).

Reading order: `VAEConfig` -> `CausalConv3d` -> blocks -> `Encoder` / `Decoder` -> `HYVideoVAE` (encode, decode,
tiling). Module attribute names equal the official checkpoint keys, so both the official `pytorch_model.pt` and the
diffusers `AutoencoderKLHunyuanVideo` safetensors load strictly without a key map.

Latent convention: `decode(z)` takes the *unscaled* latent z (what `encode(video).mode()` returns). The DiT works on
`latents = z * scaling_factor`; use `decode_latents(latents)` to divide by `config.scaling_factor` first.

Causality: every temporal convolution sees only the current and the previous frames (replicate padding of the first
frame at the front), and the mid-block attention lets frame t see frames <= t. GroupNorm is the only layer that mixes
all frames, so decoding in temporal chunks with a cache of the conv padding frames (`TilingConfig(mode="chunked")`)
is exact except for the GroupNorm statistics, which become per chunk.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hyvideo.config import tile_problem
from hyvideo.utils.host_memory import heap_buffers

if TYPE_CHECKING:  # Python 3.11+; annotations only (they are strings here), the project supports 3.10
    from typing import Self

NORM_EPS = 1e-6  # every GroupNorm in this VAE

# Per-chunk decoding state, keyed by module object: CausalConv3d -> its last (kt - 1) padded input frames, Upsample ->
# its last low-resolution input frames (1 when it doubles time, else 2), Attention -> (k, v) of the frames decoded.
StreamState = dict[nn.Module, Any]
Progress = Callable[[int, int], None]  # (passes done, passes in total), called after each decoder pass
DecodeStep = Callable[..., torch.Tensor]  # (z piece (B, 16, t, h, w), state=None) -> video piece (B, 3, f, 8h, 8w)


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3  # video channels (RGB in [-1, 1])
    out_channels: int = 3  # decoded video channels
    latent_channels: int = 16  # z channels; the encoder emits 2x this (mean, logvar)
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # encoder widths; the decoder uses them reversed
    layers_per_block: int = 2  # resnets per encoder down block; decoder up blocks have one more
    norm_num_groups: int = 32  # GroupNorm groups; must divide every width
    scaling_factor: float = 0.476986  # latents fed to the DiT are z * scaling_factor (no shift)
    time_compression_ratio: int = 4  # T frames -> (T - 1) // 4 + 1 latents (causal: first frame alone)
    spatial_compression_ratio: int = 8  # H, W -> H / 8, W / 8
    mid_block_add_attention: bool = True  # attention between the two mid-block resnets
    sample_size: int = 256  # official default spatial tile edge in pixels (config.json "sample_size")
    sample_tsize: int = 64  # official default temporal tile length in frames (config.json "sample_tsize")

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        n = len(self.block_out_channels)
        if n < 1 or min(self.block_out_channels) <= 0:
            raise ValueError(f"block_out_channels must be positive, got {self.block_out_channels}")
        for c in (*self.block_out_channels, self.block_out_channels[0]):
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide width {c}")
        if self.time_compression_ratio != 4:
            raise ValueError(f"only time_compression_ratio 4 is supported (884 VAE), got {self.time_compression_ratio}")
        s = self.spatial_compression_ratio
        if s < 1 or s & (s - 1) or int(math.log2(s)) > n:
            raise ValueError(f"spatial_compression_ratio must be a power of 2 <= 2**{n}, got {s}")
        if n < 3:  # two time-downsampling blocks plus a final block without time downsampling
            raise ValueError(f"need at least 3 blocks for 4x time compression, got {n}")
        if self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("layers_per_block and latent_channels must be >= 1")
        if self.scaling_factor <= 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")

    def strides(self) -> list[tuple[int, int, int] | None]:
        """(t, h, w) stride of each encoder down block's downsampler (= decoder up block i counted from the top)."""
        n = len(self.block_out_channels)
        n_space = int(math.log2(self.spatial_compression_ratio))
        n_time = int(math.log2(self.time_compression_ratio))
        out: list[tuple[int, int, int] | None] = []
        for i in range(n):
            space = i < n_space
            time = n - 1 - n_time <= i < n - 1  # the blocks just before the last one
            out.append((2 if time else 1, 2 if space else 1, 2 if space else 1) if (space or time) else None)
        return out

    @classmethod
    def hy_884_16c(cls) -> VAEConfig:
        """The released 884-16c-hy VAE."""
        return cls()

    @classmethod
    def from_official(cls, cfg: dict[str, Any]) -> VAEConfig:
        """From the official AutoencoderKLCausal3D `vae/config.json`."""
        _check_block_types(cfg, "DownEncoderBlockCausal3D", "UpDecoderBlockCausal3D")
        return cls(
            **_pick(cfg, ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block")),
            **_pick(cfg, ("norm_num_groups", "scaling_factor", "time_compression_ratio", "spatial_compression_ratio")),
            **_pick(cfg, ("mid_block_add_attention", "sample_size", "sample_tsize")),
        )

    @classmethod
    def from_diffusers(cls, cfg: dict[str, Any]) -> VAEConfig:
        """From diffusers' AutoencoderKLHunyuanVideo `vae/config.json`."""
        _check_block_types(cfg, "HunyuanVideoDownBlock3D", "HunyuanVideoUpBlock3D")
        kw = _pick(cfg, ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block"))
        kw |= _pick(cfg, ("norm_num_groups", "scaling_factor", "spatial_compression_ratio", "mid_block_add_attention"))
        if "temporal_compression_ratio" in cfg:
            kw["time_compression_ratio"] = cfg["temporal_compression_ratio"]
        return cls(**kw)

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> VAEConfig:
        """Either style: diffusers names when `_class_name` says so or `temporal_compression_ratio` is present."""
        if cfg.get("_class_name") == "AutoencoderKLHunyuanVideo" or "temporal_compression_ratio" in cfg:
            return cls.from_diffusers(cfg)
        return cls.from_official(cfg)

    def to_official(self) -> dict[str, Any]:
        """Official config.json content."""
        n = len(self.block_out_channels)
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["block_out_channels"] = list(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKLCausal3D",
            "act_fn": "silu",
            "down_block_types": ["DownEncoderBlockCausal3D"] * n,
            "up_block_types": ["UpDecoderBlockCausal3D"] * n,
            **d,
        }

    def to_diffusers(self) -> dict[str, Any]:
        """diffusers AutoencoderKLHunyuanVideo config.json content."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKLHunyuanVideo",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "down_block_types": ["HunyuanVideoDownBlock3D"] * n,
            "up_block_types": ["HunyuanVideoUpBlock3D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "spatial_compression_ratio": self.spatial_compression_ratio,
            "temporal_compression_ratio": self.time_compression_ratio,
            "mid_block_add_attention": self.mid_block_add_attention,
        }


def _pick(cfg: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: cfg[k] for k in names if k in cfg}


def _check_block_types(cfg: dict[str, Any], down: str, up: str) -> None:
    if cfg.get("act_fn", "silu") != "silu":
        raise ValueError(f"only act_fn 'silu' is supported, got {cfg['act_fn']!r}")
    for key, want in (("down_block_types", down), ("up_block_types", up)):
        bad = sorted({t for t in cfg.get(key, []) if t != want})
        if bad:
            raise ValueError(f"{key}: expected only {want!r}, got {bad}")


@dataclass(frozen=True)
class TilingConfig:
    """How `HYVideoVAE` splits work. Sizes are in pixels/frames of the video; latent sizes are these / 8 and / 4.

    mode "tiles": the official scheme: overlapping spatial tiles and temporal tiles (each reads frames/4 + 1 latents),
    blended linearly over the overlap (size - stride). Matches diffusers' `enable_tiling(...)` with the same numbers,
    including where time tiling starts: a clip longer than `tile_frames` frames (encode) or `tile_frames / 4` latents
    (decode) is tiled in time, although the first tile reads one latent more (at 64 / 48: from 65 frames on).
    mode "chunked": the same spatial tiles, but each tile is decoded in temporal chunks of `chunk_latents` latents
    carrying the causal-conv padding frames and attention keys forward: no temporal overlap, no recomputation; only the
    GroupNorm statistics differ from untiled decoding (per chunk instead of per clip). In this mode a clip of at most
    chunk_latents + 1 latents is one temporal tile (decoded exactly). Encoding always uses "tiles".
    """

    enabled: bool = True  # tile only when the input is larger than one tile; smaller inputs decode exactly
    mode: Literal["tiles", "chunked"] = "chunked"
    tile_size: int = 256  # spatial tile edge in pixels (32 latents)
    tile_stride: int = 192  # spatial tile stride in pixels; overlap 64 px is blended
    tile_frames: int = 64  # temporal tile length in frames (16 latents, read as 17 because of the causal first frame)
    tile_stride_frames: int = 48  # temporal tile stride in frames; overlap 16 frames is blended
    chunk_latents: int = 1  # "chunked" mode: latents per step (the first takes one more); larger = closer, more memory

    def __post_init__(self) -> None:
        if self.mode not in ("tiles", "chunked"):
            raise ValueError(f"tiling mode must be 'tiles' or 'chunked', got {self.mode!r}")
        for size, stride, unit, what in (
            (self.tile_size, self.tile_stride, 8, "tile_size/tile_stride"),
            (self.tile_frames, self.tile_stride_frames, 4, "tile_frames/tile_stride_frames"),
        ):
            why = tile_problem(size, stride, unit)
            if why is not None:
                raise ValueError(f"{what}: {why}")
        if self.chunk_latents < 1:
            raise ValueError(f"chunk_latents must be >= 1, got {self.chunk_latents}")

    @classmethod
    def official(cls, config: VAEConfig) -> TilingConfig:
        """The official tile sizes (sample_size, sample_tsize, overlap 0.25), official blending."""
        return cls(
            mode="tiles",
            tile_size=config.sample_size,
            tile_stride=config.sample_size * 3 // 4,
            tile_frames=config.sample_tsize,
            tile_stride_frames=config.sample_tsize * 3 // 4,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Layers


SLICE_BYTES = 24 * 2**20  # a conv input slice (padded frames) above this is processed in smaller time slices


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any = 1) -> torch.Tensor:
    """Unpadded conv3d. float32 on CPU always goes through oneDNN: torch's own heuristic sends inputs with a small
    B*C*T*H (the low-resolution decoder convs of one chunk) to its unfold+GEMM kernel, 2-4x slower here."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        s = [stride] * 3 if isinstance(stride, int) else list(stride)
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [0, 0, 0], s, [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride)


def norm_affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm of x (B, C, T, H, W) as a per-channel affine map: norm(x) = x * scale + shift, both float32
    (B, C, 1, 1, 1). Statistics over (C / groups, T, H, W) by torch's own GroupNorm kernel (float32 Welford, as
    F.group_norm), run on blocks of whole groups so that its discarded output stays small."""
    b, c = x.shape[:2]
    g = norm.num_groups
    cg = c // g  # channels per group
    per_group = x[0, :cg].numel() * 4  # bytes of one group's float32 output
    step = max(1, min(g, SLICE_BYTES // (b * per_group)))
    mean, rstd = [], []
    for g0 in range(0, g, step):
        xs = x[:, g0 * cg : min(g, g0 + step) * cg].float().contiguous()  # (B, n * cg, T, H, W)
        n = xs.shape[1] // cg
        _, m, r = torch.native_group_norm(xs, None, None, b, xs.shape[1], xs[0, 0].numel(), n, norm.eps)
        mean.append(m.reshape(b, n))
        rstd.append(r.reshape(b, n))
    scale = torch.cat(rstd, 1).repeat_interleave(cg, 1) * norm.weight.float()  # (B, C)
    shift = norm.bias.float() - torch.cat(mean, 1).repeat_interleave(cg, 1) * scale
    return scale.reshape(b, c, 1, 1, 1), shift.reshape(b, c, 1, 1, 1)


@dataclass
class ConvInput:
    """The input of a conv, written on demand a few frames at a time into a (padded) buffer: x itself, or
    silu(x * scale + shift) for a GroupNorm given as an affine map (scale, shift of shape (B, C, 1 or T, 1, 1))."""

    x: torch.Tensor  # (B, C, T, H, W)
    affine: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def normed(cls, norm: nn.GroupNorm | None, x: torch.Tensor) -> ConvInput:
        return cls(x, norm_affine(norm, x) if norm is not None else None)

    def write(self, a: int, b: int, out: torch.Tensor) -> None:
        """out (B, C, b - a, H, W), any strides <- input frames [a, b)."""
        xs = self.x[:, :, a:b]
        if self.affine is None:
            out.copy_(xs)
            return
        scale, shift = self.affine
        if scale.shape[2] != 1:
            scale, shift = scale[:, :, a:b], shift[:, :, a:b]
        torch.addcmul(shift, xs, scale, out=out)
        F.silu(out, inplace=True)


def group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm with float32 statistics, output in x's dtype and memory format."""
    scale, shift = norm_affine(norm, x)
    return torch.addcmul(shift, x, scale, out=torch.empty_like(x))


def pad_borders(buf: torch.Tensor, ph: int, pw: int) -> None:
    """Replicate the edge rows/columns of the interior of buf (B, C, T, H + 2ph, W + 2pw) into its borders."""
    h, w = buf.shape[3] - 2 * ph, buf.shape[4] - 2 * pw
    if ph:
        buf[:, :, :, :ph, pw : pw + w] = buf[:, :, :, ph : ph + 1, pw : pw + w]
        buf[:, :, :, ph + h :, pw : pw + w] = buf[:, :, :, ph + h - 1 : ph + h, pw : pw + w]
    if pw:
        buf[..., :pw] = buf[..., pw : pw + 1]
        buf[..., pw + w :] = buf[..., pw + w - 1 : pw + w]


def replicate_pad(x: torch.Tensor, ph: int, pw: int, channels_last: bool) -> torch.Tensor:
    """x (B, C, T, H, W) replicate-padded by ph in H and pw in W, in one allocation."""
    b, c, t, h, w = x.shape
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    out = torch.empty((b, c, t, h + 2 * ph, w + 2 * pw), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, :, ph : ph + h, pw : pw + w] = x
    pad_borders(out, ph, pw)
    return out


def _empty_like_format(y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    fmt = torch.channels_last_3d if _is_channels_last(y) else torch.contiguous_format
    return torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt)


class CausalConv3d(nn.Module):
    """Conv3d after replicate padding: (kw//2, kh//2) on both sides in space, kt - 1 frames in front in time.

    With a `state`, the kt - 1 front frames are the last input frames of the previous chunk instead. Inputs are
    written (normalised) a few frames at a time into one rolling padded buffer, so neither the padded nor the
    normalised input is ever materialised whole and each input frame is normalised once.
    """

    channels_last = False  # padded inputs in channels-last-3d? (set by CausalVAE.set_channels_last)
    min_slice = 1  # fewest output frames per time slice (set by CausalVAE.set_min_slice)

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: tuple[int, int, int] | int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride)

    def forward(
        self, x: torch.Tensor, state: StreamState | None = None, norm: nn.GroupNorm | None = None
    ) -> torch.Tensor:
        """x (B, C, T, H, W), optionally through silu(norm(.)) first -> (B, C', T / st, H / sh, W / sw)."""
        return self.run(ConvInput.normed(norm, x), state)

    def run(self, src: ConvInput, state: StreamState | None = None) -> torch.Tensor:
        kt, kh, kw = self.conv.kernel_size
        b_, c_, t, h, w = src.x.shape
        pt, ph, pw = kt - 1, kh // 2, kw // 2
        if kt == kh == kw == 1 and src.affine is None:
            return conv3d(src.x, self.conv.weight, self.conv.bias, self.conv.stride)
        padded_frame = b_ * c_ * (h + 2 * ph) * (w + 2 * pw) * src.x.element_size()
        step = t if self.conv.stride[0] != 1 else min(t, max(self.min_slice, SLICE_BYTES // padded_frame - pt))
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        buf = torch.empty(
            (b_, c_, pt + step, h + 2 * ph, w + 2 * pw), dtype=src.x.dtype, device=src.x.device, memory_format=fmt
        )
        self._fill_front(buf, src, state)
        out: torch.Tensor | None = None
        for a in range(0, t, step):  # output frames [a, a + n) read padded frames [a, a + n + pt) = buf[:, :, :pt + n]
            n = min(step, t - a)
            src.write(a, a + n, buf[:, :, pt : pt + n, ph : ph + h, pw : pw + w])
            pad_borders(buf[:, :, pt : pt + n], ph, pw)
            y = conv3d(
                buf[:, :, : pt + n], self.conv.weight, self.conv.bias, self.conv.stride
            )  # (B, C', n, H', W') (n / st when strided: one piece)
            if n == t:
                out = y
            else:
                out = out if out is not None else _empty_like_format(y, (*y.shape[:2], t, *y.shape[3:]))
                out[:, :, a : a + n] = y
            del y
            if pt and (a + n < t or state is not None):  # the last pt padded frames: the next slice's front
                for i in range(pt):  # frame by frame: source n + i is read before anything overwrites it
                    buf[:, :, i] = buf[:, :, n + i]
        if state is not None:
            keep(state, self, buf[:, :, :pt])  # (B, C, pt, H + 2ph, W + 2pw)
        assert out is not None
        return out

    def _fill_front(self, buf: torch.Tensor, src: ConvInput, state: StreamState | None) -> None:
        """buf[:, :, :pt] <- the previous chunk's last padded frames, or the first input frame repeated."""
        pt = self.conv.kernel_size[0] - 1
        if not pt:
            return
        front = state.get(self) if state is not None else None
        if front is not None:
            buf[:, :, :pt] = front
            return
        ph, pw = self.conv.kernel_size[1] // 2, self.conv.kernel_size[2] // 2
        h, w = src.x.shape[3:]
        src.write(0, 1, buf[:, :, :1, ph : ph + h, pw : pw + w])
        pad_borders(buf[:, :, :1], ph, pw)
        buf[:, :, 1:pt] = buf[:, :, :1]


def keep(state: StreamState, key: nn.Module, frames: torch.Tensor) -> None:
    """state[key] <- a copy of frames, into the previous chunk's tensor when it has the same shape: the cached frames
    keep one place in the heap instead of pinning a new block (and the holes around it) every chunk."""
    old = state.get(key)
    if isinstance(old, torch.Tensor) and old.shape == frames.shape:
        old.copy_(frames)
    else:
        state[key] = frames.clone()


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d)


class ResnetBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), with a 1x1x1 shortcut conv when widths differ."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=NORM_EPS)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=NORM_EPS)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.conv_shortcut = CausalConv3d(c_in, c_out, kernel=1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        h = self.conv1(x, state, norm=self.norm1)  # conv1(silu(norm1(x)))
        h = self.conv2(h, state, norm=self.norm2)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h.add_(x)


class Downsample(nn.Module):
    """Strided causal conv: stride (2, 2, 2) or (1, 2, 2); T -> (T - 1) // 2 + 1 thanks to the causal front pad."""

    def __init__(self, channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# Collapsing a 3-tap kernel over a nearest-upsampled (x2) axis into 2 taps on the original axis: the output at an even
# position 2i sees original samples (i - 1, i, i) -> taps [w0, w1 + w2]; at an odd one (i, i, i + 1) -> [w0 + w1, w2].
# In time the causal front pad shifts this by one: output 2j sees (j - 1, j - 1, j) and 2j + 1 sees (j - 1, j, j).
_EVEN = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0))
_ODD = ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


class Upsample(nn.Module):
    """Nearest upsampling by (ft, 2, 2), then a causal conv. With ft = 2 the first frame is upsampled in space only,
    so T latents -> 2T - 1 frames: [f0, f1, f1, f2, f2, ...].

    Computed without upsampling (sub-pixel form): every output phase (time parity when ft = 2, row and column parity)
    is a conv with a 2-tap kernel (time keeps 3 taps when ft = 1) on the replicate-padded low-resolution input, since
    replicate padding commutes with nearest upsampling. 8 (or 4) phase kernels of 2x2x2 (3x2x2) taps instead of one
    3x3x3 kernel at 4 (2) x the positions: ~3.4x fewer multiply-adds. `phases = False` runs the literal definition.
    """

    phases = True  # sub-pixel form (False: upsample then convolve; the reference the tests compare against)

    def __init__(self, channels: int, factor: tuple[int, int, int]) -> None:
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) -> (B, C, ft T (- 1 for the clip's first chunk when ft = 2), 2H, 2W)."""
        ft = self.factor[0]
        first = state is None or self not in state
        n_front = 1 if ft == 2 else 2  # low-resolution frames before x that the causal conv reaches
        front = x[:, :, :1].expand(-1, -1, n_front, -1, -1) if first else state[self]
        lo = torch.cat([front, x], 2)  # (B, C, n_front + T, H, W)
        if state is not None:
            keep(state, self, lo[:, :, -n_front:])
        skip = int(ft == 2 and first)  # the clip's first frame is not repeated: drop output frame 0
        if self.phases:
            return self._phases(lo, ft, skip)
        return self._literal(lo, n_front, ft, skip)

    def _literal(self, lo: torch.Tensor, n_front: int, ft: int, skip: int) -> torch.Tensor:
        """Upsample lo, then the causal conv whose front frames are the upsampled front."""
        up = F.interpolate(lo, scale_factor=(ft, 2, 2), mode="nearest")[:, :, ft * n_front - 2 :]  # 2 front frames
        pad = replicate_pad(up, 1, 1, self.conv.channels_last)  # (B, C, 2 + ft T, 2H + 2, 2W + 2)
        y = conv3d(pad, self.conv.conv.weight, self.conv.conv.bias)[:, :, skip:]
        return y.contiguous(
            memory_format=torch.channels_last_3d if self.conv.channels_last else torch.contiguous_format
        )

    def phase_weight(self, ft: int) -> torch.Tensor:
        """(phases * C', C, kt, 2, 2), phases ordered (time, row, column) parity; kt = 2 when ft = 2 else 3."""
        w = self.conv.conv.weight.float()  # (C', C, 3, 3, 3)
        space = torch.tensor([_EVEN, _ODD])  # (row parity, 2 taps, 3 taps)
        time = torch.tensor([_ODD, _EVEN]) if ft == 2 else torch.eye(3)[None]  # (time parity, kt, 3)
        k = torch.einsum("pad,qbe,rcf,oidef->pqroiabc", time, space, space, w)
        return k.reshape(-1, *k.shape[4:]).to(self.conv.conv.weight.dtype)

    def _phases(self, lo: torch.Tensor, ft: int, skip: int) -> torch.Tensor:
        b, c, t_lo, h, w = lo.shape
        weight, bias = self.phase_weight(ft), self.conv.conv.bias.repeat(4 * ft)
        kt = weight.shape[2]
        t = t_lo - kt + 1  # low-resolution frames of x
        pad = replicate_pad(lo, 1, 1, self.conv.channels_last)  # (B, C, kt - 1 + T, H + 2, W + 2)
        fmt = torch.channels_last_3d if self.conv.channels_last else torch.contiguous_format
        out = torch.empty((b, c, ft * t - skip, 2 * h, 2 * w), dtype=lo.dtype, device=lo.device, memory_format=fmt)
        per_frame = 4 * ft * c * (h + 1) * (w + 1) * lo.element_size()  # phase outputs of one low-res frame
        step = min(t, max(1, SLICE_BYTES // per_frame))
        for j0 in range(0, t, step):
            j1 = min(t, j0 + step)
            y = conv3d(pad[:, :, j0 : j1 + kt - 1], weight, bias)  # (B, 4 ft C, j1 - j0, H + 1, W + 1)
            y = y.unflatten(1, (ft, 2, 2, c))  # (B, ft, 2, 2, C, j1 - j0, H + 1, W + 1)
            for p in range(ft):
                s0 = ft * j0 + p - skip  # output frame of y's first frame for time parity p
                first = max(0, -s0)  # skip < 0 (the clip's dropped frame 0) only
                s0 += first * ft
                for r in range(2):
                    for q in range(2):
                        dst = out[:, :, s0 : ft * j1 - skip : ft, r::2, q::2]
                        dst.copy_(y[:, p, r, q, :, first:, r : r + h, q : q + w])
            del y
        return out


class Attention(nn.Module):
    """Single-head self-attention over all pixels, frame t attending to frames <= t; residual added.

    Keys match the official checkpoint: group_norm, to_q, to_k, to_v, to_out.0. Softmax in float32.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        hs = group_norm(self.group_norm, x).permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c)  # (B, T, HW, C)
        q, k, v = self.to_q(hs), self.to_k(hs), self.to_v(hs)  # (B, T, HW, C)
        out = self.to_out[0](causal_frame_attention(q, k, v, state, self))  # (B, T, HW, C)
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        fmt = torch.channels_last_3d if _is_channels_last(x) else torch.contiguous_format
        return out.contiguous(memory_format=fmt).add_(x)


def causal_frame_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: StreamState | None, key: nn.Module
) -> torch.Tensor:
    """Single-head attention, q, k, v (B, T, HW, C) -> (B, T, HW, C): every pixel of frame t attends to all pixels of
    frames <= t. With a `state`, the keys and values of earlier chunks (cached under `key`) come first and this
    chunk's are appended. Softmax in float32."""
    b, t, _, c = q.shape
    if state is not None:
        k_prev, v_prev = state.get(key, (k[:, :0], v[:, :0]))
        k, v = torch.cat([k_prev, k], 1), torch.cat([v_prev, v], 1)  # (B, T_prev + T, HW, C)
        state[key] = (k, v)
    n_prev = k.shape[1] - t
    up = torch.float32 if q.dtype != torch.float32 else q.dtype
    out = torch.empty_like(q)
    for i in range(t):  # frame i sees frames [0, n_prev + i]: a block-causal mask without building it
        kk = k[:, : n_prev + i + 1].reshape(b, 1, -1, c).to(up)  # (B, 1, L, C)
        vv = v[:, : n_prev + i + 1].reshape(b, 1, -1, c).to(up)
        out[:, i] = F.scaled_dot_product_attention(q[:, i, None].to(up), kk, vv)[:, 0].to(q.dtype)
    return out


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)] if add_attention else [])

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        x = self.resnets[0](x, state)
        for attn in self.attentions:
            x = attn(x, state)
        return self.resnets[1](x, state)


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int, groups: int, stride: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c_in if j == 0 else c_out, c_out, groups) for j in range(n)])
        self.downsamplers = nn.ModuleList([Downsample(c_out, stride)]) if stride else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int, groups: int, factor: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c_in if j == 0 else c_out, c_out, groups) for j in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(c_out, factor)]) if factor else None

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        for r in self.resnets:
            x = r(x, state)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, state)
        return x


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> (B, 2*latent, (T-1)/4+1, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0])
        strides = cfg.strides()
        self.down_blocks = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, strides[i]) for i in range(len(ch))
        )
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(x, norm=self.conv_norm_out)


class Decoder(nn.Module):
    """(B, latent, T, h, w) -> (B, 3, 4(T-1)+1, 8h, 8w); with a `state`, a chunk after the first gives 4T frames."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = CausalConv3d(cfg.latent_channels, ch[0])
        self.mid_block = MidBlock(ch[0], g, cfg.mid_block_add_attention)
        factors = cfg.strides()  # the official rule for up block i is the one for down block i
        n = len(ch)
        self.up_blocks = nn.ModuleList(
            UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, factors[i]) for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels)

    def forward(self, z: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        x = self.conv_in(z, state)
        x = self.mid_block(x, state)
        for layer in self.up_layers():  # not block by block: a block would hold its input until its last resnet
            x = layer(x, state)
        return self.conv_out(x, state, norm=self.conv_norm_out)

    def up_layers(self) -> list[nn.Module]:
        """The resnets and upsamplers of every up block, in order."""
        return [m for block in self.up_blocks for m in (*block.resnets, *(block.upsamplers or ()))]


@dataclass
class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) over z, each (B, latent, T, h, w); logvar clamped to [-30, 20]."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, eps drawn on the generator's device then moved (same draw on every device)."""
        dev = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=dev, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean


# ---------------------------------------------------------------------------------------------------------------------
# The model


def counted(
    decoder_pass: Callable[[torch.Tensor, StreamState | None], torch.Tensor], total: int, progress: Progress | None
) -> DecodeStep:
    """`decoder_pass` (latents, stream state) -> pixels, reporting progress(done, total) after each call."""
    done = 0

    def step(v: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        nonlocal done
        out = decoder_pass(v, state)
        done += 1
        if progress is not None:
            progress(done, total)
        return out

    return step


class CausalVAE(nn.Module, ABC):
    """What both causal VAEs (HYVideoVAE, HYVideo15VAE) share around their own encoder and decoder: the tiling and
    conv-layout switches, `decode` (a counted decoder pass per tile / chunk), the DiT-latent wrappers and the chunked
    decode of one spatial tile. A subclass sets `config` (scaling_factor, time_compression_ratio), `tiling` (a frozen
    dataclass with enabled, chunk_latents), `decoder` (its conv_in a CausalConv3d) and implements `decode_steps`,
    `_decode` and `_decode_pass`."""

    config: Any
    tiling: Any
    decoder: nn.Module
    channels_last = False  # see set_channels_last

    # -- switches --------------------------------------------------------------------------------------------------
    def enable_tiling(self, **overrides: Any) -> Self:
        """Turn tiling on; keyword overrides are fields of the model's tiling config (mode, tile_size, ...)."""
        self.tiling = replace(self.tiling, enabled=True, **overrides)
        return self

    def disable_tiling(self) -> Self:
        self.tiling = replace(self.tiling, enabled=False)
        return self

    def set_channels_last(self, enabled: bool) -> Self:
        """Run the 3x3x3 convs on channels-last-3d inputs or contiguous ones (same values, another speed)."""
        self.channels_last = enabled
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.channels_last = enabled
        return self

    def set_min_slice(self, frames: int) -> Self:
        """Fewest output frames a causal conv computes per time slice, whatever SLICE_BYTES allows (>= 1)."""
        if frames < 1:
            raise ValueError(f"min_slice must be >= 1, got {frames}")
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.min_slice = frames
        return self

    # -- public API ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, z: torch.Tensor, clamp: bool = False, progress: Progress | None = None) -> torch.Tensor:
        """Unscaled z (B, latent, T, h, w) -> video (B, 3, 4(T-1)+1, s h, s w), s the spatial compression.
        `clamp=True` clips to [-1, 1].

        `progress(done, total)` is called after each decoder pass (a spatial tile's temporal tile or chunk, or the
        whole clip when untiled): done = 1 .. total, total = `decode_steps(z.shape)`."""
        step = counted(self._decode_pass, self.decode_steps(z.shape), progress)
        with heap_buffers(z.device.type == "cpu" and self.tiling.enabled):  # untiled: few, huge buffers
            out = self._decode(self._in(z), step).contiguous()
        return out.clamp_(-1.0, 1.0) if clamp else out

    def decode_latents(
        self, latents: torch.Tensor, clamp: bool = True, progress: Progress | None = None
    ) -> torch.Tensor:
        """DiT latents (z * scaling_factor) -> video clipped to [-1, 1]; `progress` as in `decode`."""
        return self.decode(latents / self.config.scaling_factor, clamp=clamp, progress=progress)

    def encode_latents(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """video -> DiT latents: a posterior sample (its mean when generator is None) times scaling_factor."""
        post = self.encode(video)
        z = post.mode() if generator is None else post.sample(generator)
        return z * self.config.scaling_factor

    @abstractmethod
    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """video (B, 3, 4k+1, H, W) in [-1, 1] -> posterior over unscaled z."""

    @abstractmethod
    def decode_steps(self, shape: Sequence[int]) -> int:
        """Decoder passes `decode` makes for latents of `shape` (B, C, T, h, w) under the current tiling."""

    # -- internals -------------------------------------------------------------------------------------------------
    @abstractmethod
    def _decode_pass(self, z: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        """One decoder pass: latents (B, latent, t, h, w) -> pixels, carrying `state` between chunks."""

    @abstractmethod
    def _decode(self, z: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        """The whole decode of z (tiles, chunks) through `step`, a counted `_decode_pass`."""

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        p = self.decoder.conv_in.conv.weight
        return x.to(device=p.device, dtype=p.dtype).contiguous()

    def _chunk_starts(self, latents: int) -> list[int]:
        """First latent of each chunk: [0, n + 1), [n + 1, 2n + 1), ... for n = chunk_latents."""
        n = self.tiling.chunk_latents
        return [0, *range(n + 1, latents, n)]

    def _decode_chunked(self, z: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        """Decode `chunk_latents` latents at a time into one preallocated video, carrying the stream state (the conv
        padding frames and attention keys)."""
        tc, n = self.config.time_compression_ratio, self.tiling.chunk_latents
        state: StreamState = {}
        out: torch.Tensor | None = None
        pos = 0
        for i in self._chunk_starts(z.shape[2]):
            y = step(z[:, :, i : n + 1 if i == 0 else i + n], state)  # (B, 3, 4n + 1 first, else 4n, H, W)
            if out is None:
                out = y.new_empty((*y.shape[:2], (z.shape[2] - 1) * tc + 1, *y.shape[3:]))
            out[:, :, pos : pos + y.shape[2]] = y
            pos += y.shape[2]
            del y
        assert out is not None and pos == out.shape[2]
        return out


class HYVideoVAE(CausalVAE):
    """Encoder + decoder of 884-16c-hy with optional tiling (`self.tiling`, see TilingConfig).

    decode(z): unscaled z (B, 16, T, h, w) -> video (B, 3, 4(T-1)+1, 8h, 8w), nominally in [-1, 1].
    decode_latents(latents): the same for DiT latents (divides by config.scaling_factor).
    encode(video): (B, 3, 4k+1, H, W) in [-1, 1] -> DiagonalGaussian over unscaled z.
    """

    def __init__(self, config: VAEConfig, tiling: TilingConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.tiling = tiling or TilingConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv3d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(config.latent_channels, config.latent_channels, 1)

    # -- public API ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """video (B, 3, T, H, W) in [-1, 1], T = 4k + 1, H and W multiples of 8 -> posterior over unscaled z."""
        x = self._in(video)
        return DiagonalGaussian.from_moments(self._encode(x).contiguous())

    def decode_steps(self, shape: Sequence[int]) -> int:
        """Decoder passes `decode` makes for latents of `shape` (B, C, T, h, w) under the current tiling: spatial
        tiles x (temporal tiles or chunks per spatial tile); 1 when untiled or when everything fits one tile."""
        t, s, tc = self.tiling, self.config.spatial_compression_ratio, self.config.time_compression_ratio
        if not t.enabled:
            return 1
        frames, h, w = shape[2], shape[3], shape[4]
        lat_size, lat_stride = t.tile_size // s, t.tile_stride // s
        space = 1 if max(h, w) <= lat_size else len(range(0, h, lat_stride)) * len(range(0, w, lat_stride))
        if not self._long(frames):
            return space
        if t.mode == "chunked":
            return space * len(self._chunk_starts(frames))
        return space * len(range(0, frames, t.tile_stride_frames // tc))

    # -- internals -------------------------------------------------------------------------------------------------
    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (B, 2*latent, T', h, w)

    def _decode_pass(self, z: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z), state)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        tc, s, t = self.config.time_compression_ratio, self.config.spatial_compression_ratio, self.tiling
        space = self._encode_tile
        if t.enabled and max(x.shape[3], x.shape[4]) > t.tile_size:
            blend = (t.tile_size - t.tile_stride) // s

            def space(v: torch.Tensor) -> torch.Tensor:
                out_hw = (v.shape[3] // s, v.shape[4] // s)
                return tile_space(v, self._encode_tile, t.tile_size, t.tile_stride, t.tile_stride // s, blend, out_hw)

        if t.enabled and x.shape[2] > t.tile_frames:  # the official boundary (65 frames tile at tile_frames 64)
            blend = (t.tile_frames - t.tile_stride_frames) // tc
            n_out = (x.shape[2] - 1) // tc + 1
            return tile_time(x, space, t.tile_frames, t.tile_stride_frames, t.tile_stride_frames // tc, blend, n_out)
        return space(x)

    def _long(self, frames: int) -> bool:
        """Whether latents of `frames` frames are decoded in more than one temporal piece. Chunks: the first reads
        chunk_latents + 1 latents. Tiles: the official boundary, more than tile_frames / 4 latents, although a tile
        reads tile_frames / 4 + 1 (so a clip of exactly that many is tiled, as the official VAE and diffusers do)."""
        t = self.tiling
        if t.mode == "chunked":
            return frames > t.chunk_latents + 1
        return frames > t.tile_frames // self.config.time_compression_ratio

    def _decode(self, z: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        """`step(z_piece, state)` decodes one piece (post_quant_conv + decoder); `decode` passes a counting one."""
        tc, s, t = self.config.time_compression_ratio, self.config.spatial_compression_ratio, self.tiling
        if not t.enabled:
            return step(z)
        lat_t, lat_size, lat_stride = t.tile_frames // tc, t.tile_size // s, t.tile_stride // s
        n_frames = (z.shape[2] - 1) * tc + 1
        long = self._long(z.shape[2])

        def all_frames(v: torch.Tensor) -> torch.Tensor:  # one spatial tile (B, 16, T, h, w) -> (B, 3, F, 8h, 8w)
            if not long:
                return step(v)
            if t.mode == "chunked":
                return self._decode_chunked(v, step)
            blend = t.tile_frames - t.tile_stride_frames
            return tile_time(v, step, lat_t, t.tile_stride_frames // tc, t.tile_stride_frames, blend, n_frames)

        if max(z.shape[3], z.shape[4]) <= lat_size:
            return all_frames(z)
        out_hw = (z.shape[3] * s, z.shape[4] * s)
        return tile_space(z, all_frames, lat_size, lat_stride, t.tile_stride, t.tile_size - t.tile_stride, out_hw)


# ---------------------------------------------------------------------------------------------------------------------
# Tiling with linear blending. Tiles are processed in order; each keeps its first `keep` rows/frames after blending its
# head with the tail of the previous tile (and, in space, its top with the tile above, then its left with the tile to
# the left, both already blended). Only the tails are kept between tiles; the output is written as tiles complete.


def _ramp(n: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Weights k / n for k in [0, n), shaped to broadcast along `dim` of a 5-D tensor."""
    shape = [1] * 5
    shape[dim] = n
    return (torch.arange(n, dtype=torch.float32, device=like.device) / n).to(like.dtype).reshape(shape)


def blend_into(prev_tail: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> None:
    """cur[:e] = prev_tail[-e:] * (1 - k/e) + cur[:e] * k/e along `dim`, in place; e = min(sizes, extent)."""
    e = min(prev_tail.shape[dim], cur.shape[dim], extent)
    if e <= 0:
        return
    w = _ramp(e, dim, cur)
    head = cur.narrow(dim, 0, e)
    head.copy_(prev_tail.narrow(dim, prev_tail.shape[dim] - e, e) * (1 - w) + head * w)


def _tail(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """A copy of the last n (at most all) entries of x along dim, so the rest of x can be freed."""
    n = max(0, min(n, x.shape[dim]))
    return x.narrow(dim, x.shape[dim] - n, n).clone()


def tile_space(
    x: torch.Tensor,
    fn: Any,
    size: int,
    stride: int,
    keep: int,
    blend: int,
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Apply `fn` to (size x size) tiles of x (B, C, T, H, W) taken every `stride`; blend `blend` output px; keep
    `keep` output px per tile. Returns (B, C', T', *out_hw)."""
    out: torch.Tensor | None = None
    above: dict[int, torch.Tensor] = {}  # column -> bottom strip of the tile above (blended)
    for r, i in enumerate(range(0, x.shape[3], stride)):
        left: torch.Tensor | None = None
        for c, j in enumerate(range(0, x.shape[4], stride)):
            tile = fn(x[:, :, :, i : i + size, j : j + size])  # (B, C', T', h, w)
            if c in above:
                blend_into(above[c], tile, blend, 3)
            if left is not None:
                blend_into(left, tile, blend, 4)
            if out is None:
                out = tile.new_empty((*tile.shape[:3], *out_hw))
            dst = out[:, :, :, r * keep : (r + 1) * keep, c * keep : (c + 1) * keep]
            dst.copy_(tile[:, :, :, : dst.shape[3], : dst.shape[4]])
            above[c] = _tail(tile, blend, 3)
            left = _tail(tile, blend, 4)
            del tile
    assert out is not None
    return out


def tile_time(
    x: torch.Tensor,
    fn: Any,
    size: int,
    stride: int,
    keep: int,
    blend: int,
    n_out: int,
) -> torch.Tensor:
    """Apply `fn` to causal temporal tiles x[:, :, i : i + size + 1] for i in range(0, T, stride). Every tile after
    the first drops its first output frame (the causal "first frame" of the tile), blends `blend` frames with the
    previous tile and keeps `keep` frames; the first keeps keep + 1. Returns (B, C', n_out, H', W')."""
    out: torch.Tensor | None = None
    tail: torch.Tensor | None = None
    for k, i in enumerate(range(0, x.shape[2], stride)):
        tile = fn(x[:, :, i : i + size + 1])  # (B, C', T', H', W')
        if k > 0:
            tile = tile[:, :, 1:]
            blend_into(tail, tile, blend, 2)
        if out is None:
            out = tile.new_empty((*tile.shape[:2], n_out, *tile.shape[3:]))
        start = 0 if k == 0 else k * keep + 1
        dst = out[:, :, start : min(start + keep + (k == 0), n_out)]
        dst.copy_(tile[:, :, : dst.shape[2]])
        tail = _tail(tile, blend, 2)
        del tile
    assert out is not None
    return out


def build_vae(config: VAEConfig, device: torch.device | str = "meta") -> HYVideoVAE:
    """Construct without allocating weights (meta) so a state dict can be assigned in place."""
    with torch.device(device):
        return HYVideoVAE(config)
