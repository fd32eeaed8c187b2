"""The HunyuanVideo 1.5 causal VAE: 4x causal time and 16x16 space compression, 32 latent channels (docs/DESIGN.md §19).

Reading order: `VAE15Config` -> `TilingConfig15` -> layers (RMS norm, pixel-shuffle resampling, resnets, attention)
-> `Encoder` / `Decoder` -> `HYVideo15VAE` (encode, decode, tiling). Module attribute names equal the official
checkpoint keys (`encoder.down.0.block.0.norm1.gamma`, `decoder.mid.attn_1.q.weight`, ...); diffusers'
`AutoencoderKLHunyuanVideo15` names map through the one table in hyvideo/checkpoints/vae15.py.

Latent convention as for the v1 VAE: `decode(z)` takes the unscaled z (what `encode(video).mode()` returns), the DiT
works on z * scaling_factor (no shift) and `decode_latents` divides it out.

Causality: every temporal conv reads the current and earlier frames only (the first frame replicated in front), the
mid-block attention lets frame t see frames <= t, and the norm is an RMS norm over the channels of one position. No
layer mixes statistics across frames, so decoding (and encoding) in temporal chunks that carry the convs' padding
frames and the attention's keys forward is exact: `TilingConfig15(mode="chunked")` gives the whole-clip result up to
float rounding, with memory bounded by the chunk and the spatial tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hyvideo.config import tile_problem
from hyvideo.modules.vae import (
    CausalConv3d,
    CausalVAE,
    ConvInput,
    DecodeStep,
    DiagonalGaussian,
    StreamState,
    causal_frame_attention,
    conv3d,
    tile_space,
)

RMS_EPS = 1e-12  # the floor of the channel norm (F.normalize's default, used by both references)
# a causal conv's time slices hold at least this many frames: a chunk of the default chunked decode (5 frames at most)
# is one slice, a longer input (untiled, "tiles" mode) is still cut to bound the padded buffer
MIN_SLICE_FRAMES = 8


@dataclass(frozen=True)
class VAE15Config:
    in_channels: int = 3  # video channels (RGB in [-1, 1])
    out_channels: int = 3  # decoded video channels
    latent_channels: int = 32  # z channels; the encoder emits 2x this (mean, logvar)
    block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)  # encoder widths; the decoder's reversed
    layers_per_block: int = 2  # resnets per encoder level; decoder levels have one more
    spatial_compression_ratio: int = 16  # H, W -> H / 16, W / 16: one 2x step in each of the first log2(16) levels
    time_compression_ratio: int = 4  # T = 4k + 1 frames -> k + 1 latents (causal: the first frame alone)
    downsample_match_channel: bool = True  # a resampler changes the width to the next level's (else keeps it)
    upsample_match_channel: bool = True
    scaling_factor: float = 1.03682  # latents fed to the DiT are z * scaling_factor (no shift)
    sample_size: int = 256  # official spatial tile edge in pixels (config.json "sample_size")
    sample_tsize: int = 64  # official temporal tile length in frames (config.json; unused: no temporal tiles)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        ch, s, tc = self.block_out_channels, self.spatial_compression_ratio, self.time_compression_ratio
        if not ch or min(ch) <= 0 or self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("block_out_channels, layers_per_block and latent_channels must be positive")
        if s < 2 or s & (s - 1) or tc < 1 or tc & (tc - 1) or tc > s:
            raise ValueError(f"compression ratios must be powers of 2 with time <= space, got {s} and {tc}")
        if int(math.log2(s)) >= len(ch):
            raise ValueError(f"spatial_compression_ratio {s} needs more than log2({s}) levels, got {len(ch)}")
        if ch[-1] % (2 * self.latent_channels):
            raise ValueError(f"the last width {ch[-1]} must be a multiple of 2 * latent_channels")
        if self.scaling_factor <= 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")
        for c_in, c_out, temporal in self.downsamplers():
            factor = 8 if temporal else 4
            if c_out % factor or (factor * c_in) % c_out or (temporal and (4 * c_in) % c_out):
                raise ValueError(f"a downsampler from {c_in} to {c_out} channels cannot pack {factor} pixels")
        for c_in, c_out, temporal in self.upsamplers():
            factor = 8 if temporal else 4
            if c_in % factor or (factor * c_out) % c_in or (temporal and (4 * c_out) % c_in):
                raise ValueError(f"an upsampler from {c_in} to {c_out} channels cannot unpack {factor} pixels")

    def levels(self) -> int:
        """Levels with a spatial 2x step (log2 of the spatial ratio); the remaining levels keep the resolution."""
        return int(math.log2(self.spatial_compression_ratio))

    def encoder_plan(self) -> list[tuple[int, int, tuple[int, int, bool] | None]]:
        """Per encoder level: (resnet input width, width, downsampler (in, out, halves time) or None)."""
        ch, n_space = self.block_out_channels, self.levels()
        first_time = n_space - int(math.log2(self.time_compression_ratio))  # the last log2(tc) spatial levels
        plan, c = [], ch[0]
        for i, width in enumerate(ch):
            down = None
            if i < n_space:
                out = ch[i + 1] if self.downsample_match_channel else width
                down = (width, out, i >= first_time)
            plan.append((c, width, down))
            c = down[1] if down else width
        return plan

    def decoder_plan(self) -> list[tuple[int, int, tuple[int, int, bool] | None]]:
        """Per decoder level (widths reversed): (resnet input width, width, upsampler (in, out, doubles time))."""
        ch, n_space = tuple(reversed(self.block_out_channels)), self.levels()
        n_time = int(math.log2(self.time_compression_ratio))  # the first log2(tc) levels also double time
        plan, c = [], ch[0]
        for i, width in enumerate(ch):
            up = None
            if i < n_space or i < n_time:
                out = ch[i + 1] if self.upsample_match_channel else width
                up = (width, out, i < n_time)
            plan.append((c, width, up))
            c = up[1] if up else width
        return plan

    def downsamplers(self) -> list[tuple[int, int, bool]]:
        return [d for _, _, d in self.encoder_plan() if d is not None]

    def upsamplers(self) -> list[tuple[int, int, bool]]:
        return [u for _, _, u in self.decoder_plan() if u is not None]

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.time_compression_ratio + 1

    # -- config.json in the two layouts ------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, cfg: dict[str, Any]) -> VAE15Config:
        """From the official AutoencoderKLConv3D `vae/config.json` (ffactor_* names, shift_factor null)."""
        _check_no_shift(cfg)
        kw = _pick(cfg, _COMMON)
        if "ffactor_spatial" in cfg:
            kw["spatial_compression_ratio"] = cfg["ffactor_spatial"]
        if "ffactor_temporal" in cfg:
            kw["time_compression_ratio"] = cfg["ffactor_temporal"]
        return cls(**kw, **_pick(cfg, ("sample_size", "sample_tsize")))

    @classmethod
    def from_diffusers(cls, cfg: dict[str, Any]) -> VAE15Config:
        """From diffusers' AutoencoderKLHunyuanVideo15 `vae/config.json`."""
        _check_no_shift(cfg)
        kw = _pick(cfg, (*_COMMON, "spatial_compression_ratio"))
        if "temporal_compression_ratio" in cfg:
            kw["time_compression_ratio"] = cfg["temporal_compression_ratio"]
        return cls(**kw)

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> VAE15Config:
        """Either layout, told apart by `_class_name` or, without one, by the official `ffactor_spatial` name."""
        return cls.from_official(cfg) if config_layout(cfg) == "official" else cls.from_diffusers(cfg)

    def to_official(self) -> dict[str, Any]:
        return {
            "_class_name": OFFICIAL_CLASS,
            **{k: getattr(self, k) for k in _COMMON},
            "block_out_channels": list(self.block_out_channels),
            "ffactor_spatial": self.spatial_compression_ratio,
            "ffactor_temporal": self.time_compression_ratio,
            "sample_size": self.sample_size,
            "sample_tsize": self.sample_tsize,
            "shift_factor": None,
        }

    def to_diffusers(self) -> dict[str, Any]:
        return {
            "_class_name": DIFFUSERS_CLASS,
            **{k: getattr(self, k) for k in _COMMON},
            "block_out_channels": list(self.block_out_channels),
            "spatial_compression_ratio": self.spatial_compression_ratio,
            "temporal_compression_ratio": self.time_compression_ratio,
        }


OFFICIAL_CLASS = "AutoencoderKLConv3D"
DIFFUSERS_CLASS = "AutoencoderKLHunyuanVideo15"
_COMMON = (
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "downsample_match_channel",
    "upsample_match_channel",
    "scaling_factor",
)
assert set(_COMMON) < {f.name for f in fields(VAE15Config)}


def config_layout(cfg: dict[str, Any]) -> Literal["official", "diffusers"]:
    """Which layout a VAE config.json comes from; ValueError for another model's config."""
    name = cfg.get("_class_name")
    if name == OFFICIAL_CLASS or (name is None and "ffactor_spatial" in cfg):
        return "official"
    if name == DIFFUSERS_CLASS or (name is None and "spatial_compression_ratio" in cfg):
        return "diffusers"
    raise ValueError(f"not a HunyuanVideo 1.5 VAE config (_class_name {name!r})")


def _pick(cfg: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {k: cfg[k] for k in names if k in cfg}


def _check_no_shift(cfg: dict[str, Any]) -> None:
    if cfg.get("shift_factor"):
        raise ValueError(f"shift_factor {cfg['shift_factor']} is not supported (the release has none)")


TINY_VAE15 = VAE15Config(block_out_channels=(8, 16, 32, 64, 64), layers_per_block=1)  # tests and the tiny model


@dataclass(frozen=True)
class TilingConfig15:
    """How `HYVideo15VAE` splits work. Sizes in pixels; latent sizes are these / 16.

    Spatial tiles of `tile_size` every `tile_stride`, blended linearly over the overlap (size - stride), as the
    official VAE and diffusers' `enable_tiling` do (official: 256 / 224, diffusers: 256 / 192).
    mode "chunked" (default): each spatial tile is decoded `chunk_latents` latents at a time, the causal convs'
    padding frames and the attention keys carried forward: the same result as decoding the tile whole (the model has
    no cross-frame statistics), with memory bounded by the chunk. mode "tiles": each spatial tile decoded whole in
    time, the official behaviour (the official VAE refuses temporal tiles for this model).
    Encoding: chunked in time whenever tiling is enabled (exact); spatial tiles only with `encode_tiles`, because the
    official image-to-video pipeline encodes its image untiled.
    """

    enabled: bool = True  # smaller inputs than one tile / one chunk are processed whole either way
    mode: Literal["tiles", "chunked"] = "chunked"
    tile_size: int = 256  # spatial tile edge in pixels (16 latents)
    tile_stride: int = 224  # the official overlap factor 0.125: 32 px blended
    chunk_latents: int = 1  # latents per decoder pass (the first pass takes one more); larger = faster, more memory
    encode_tiles: bool = False  # spatial tiles for encoding too

    def __post_init__(self) -> None:
        if self.mode not in ("tiles", "chunked"):
            raise ValueError(f"tiling mode must be 'tiles' or 'chunked', got {self.mode!r}")
        why = tile_problem(self.tile_size, self.tile_stride, 16)
        if why is not None:
            raise ValueError(f"tile_size/tile_stride: {why}")
        if self.chunk_latents < 1:
            raise ValueError(f"chunk_latents must be >= 1, got {self.chunk_latents}")

    @classmethod
    def official(cls, config: VAE15Config) -> TilingConfig15:
        """The official decode: sample_size tiles with overlap 0.125, whole clips."""
        size = config.sample_size
        return cls(mode="tiles", tile_size=size, tile_stride=size - size // 8)


# ---------------------------------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(C) * gamma, the L2 norm taken over the channels of each position (B, ., T, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T, H, W) -> normalised, statistics in float32, output in x's dtype."""
        return rms_normed(self, x).to(x.dtype)


def rms_normed(norm: RMSNorm, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """RMS norm of x (B, C, T, H, W) in float32, into `out` (any strides) when given and x is float32."""
    xf = x.float()
    inv = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min_(RMS_EPS).reciprocal_()  # (B, 1, T, H, W)
    weight = norm.gamma.float() * norm.gamma.shape[0] ** 0.5  # (C, 1, 1, 1)
    return torch.mul(xf, inv, out=out).mul_(weight)  # (B, C, T, H, W) float32


@dataclass
class RMSInput(ConvInput):
    """A conv input silu(rms_norm(x)), written a few frames at a time (see CausalConv3d.run)."""

    norm: RMSNorm | None = None

    def write(self, a: int, b: int, out: torch.Tensor) -> None:
        assert self.norm is not None
        xs = self.x[:, :, a:b]
        if xs.dtype == out.dtype == torch.float32 and not torch.is_grad_enabled():  # no temporary (out= has no grad)
            rms_normed(self.norm, xs, out)
        else:  # half precision: normalised in float32, rounded once
            out.copy_(rms_normed(self.norm, xs))
        F.silu(out, inplace=True)


def space_to_depth(x: torch.Tensor, rt: int) -> torch.Tensor:
    """(B, C, rt T, 2H, 2W) -> (B, rt*2*2*C, T, H, W), channels ordered (time, row, column phase, channel)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // rt, rt, h // 2, 2, w // 2, 2)
    return x.permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(b, rt * 4 * c, t // rt, h // 2, w // 2)


def depth_to_space(x: torch.Tensor, rt: int) -> torch.Tensor:
    """(B, rt*2*2*C, T, H, W) -> (B, C, rt T, 2H, 2W), the inverse of `space_to_depth`."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, rt, 2, 2, c // (4 * rt), t, h, w)
    return x.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, c // (4 * rt), t * rt, 2 * h, 2 * w)


def _first_chunk(module: nn.Module, state: StreamState | None) -> bool:
    """Whether this call holds the clip's first frame (no state, or the module has not run in this stream)."""
    first = state is None or module not in state
    if state is not None:
        state[module] = True
    return first


class ResnetBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))); a 1x1x1 `nin_shortcut` when the widths differ."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = RMSNorm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.nin_shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        h = self.conv1.run(RMSInput(x, norm=self.norm1), state)
        h = self.conv2.run(RMSInput(h, norm=self.norm2), state)
        if self.nin_shortcut is not None:
            x = conv3d(x, self.nin_shortcut.weight, self.nin_shortcut.bias)
        return h.add_(x)


class Downsample(nn.Module):
    """A causal conv to c_out / f channels, then f = 2x2 (x2 in time) pixels packed into channels; plus a shortcut
    packing x the same way and averaging groups of channels down to c_out. Halving time, the clip's first frame is
    packed alone (its channels duplicated), later frames in pairs: T = 2k + 1 -> k + 1."""

    def __init__(self, c_in: int, c_out: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(c_in, c_out // (8 if temporal else 4))

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) -> (B, C', T' , H/2, W/2); in a stream every chunk after the first has an even T."""
        first = _first_chunk(self, state)
        h = self.conv(x, state)  # (B, C' / f, T, H, W)
        if not self.temporal:
            return self._pack(h, x, 1)
        parts = []
        if first:
            h0 = space_to_depth(h[:, :, :1], 1)  # (B, C' / 2, 1, H/2, W/2)
            parts.append(self._pack_first(h0, x[:, :, :1]))
            h, x = h[:, :, 1:], x[:, :, 1:]
        if h.shape[2]:
            parts.append(self._pack(h, x, 2))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    @staticmethod
    def _pack(h: torch.Tensor, x: torch.Tensor, rt: int) -> torch.Tensor:
        h = space_to_depth(h, rt)  # (B, C', T / rt, H/2, W/2)
        xs = space_to_depth(x, rt)  # (B, f C, T / rt, H/2, W/2)
        c = h.shape[1]
        return h.add_(xs.unflatten(1, (c, xs.shape[1] // c)).mean(2))

    @staticmethod
    def _pack_first(h0: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        h0 = torch.cat([h0, h0], 1)  # (B, C', 1, H/2, W/2)
        xs = space_to_depth(x0, 1)  # (B, 4 C, 1, H/2, W/2)
        c = h0.shape[1]
        return h0.add_(xs.unflatten(1, (c, xs.shape[1] // c)).mean(2))


class Upsample(nn.Module):
    """A causal conv to f * c_out channels, unpacked into f = 2x2 (x2 in time) pixels; plus a shortcut unpacking x the
    same way with each channel repeated. Doubling time, the clip's first frame unpacks to one frame (the first half
    of its channels), later frames to two: T -> 2T - 1."""

    def __init__(self, c_in: int, c_out: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(c_in, c_out * factor)
        self.repeats = factor * c_out // c_in

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) -> (B, C', T or 2T (- 1 for the clip's first chunk), 2H, 2W)."""
        first = _first_chunk(self, state)
        h = self.conv(x, state)  # (B, f C', T, H, W)
        rt = 2 if self.temporal else 1
        if not self.temporal:  # the shortcut is repeated before unpacking: channel k of x feeds channels k*r..k*r+r-1
            return depth_to_space(h.add_(x.repeat_interleave(self.repeats, 1)), 1)
        parts = []
        if first:
            c = h.shape[1]
            h0 = h[:, :, :1].unflatten(1, (4, 2, c // 8))[:, :, 0]  # (B, 4, C', 1, H, W): first half per phase
            x0 = x[:, :, :1].unflatten(1, (4, x.shape[1] // 4)).repeat_interleave(self.repeats // 2, 2)
            parts.append(depth_to_space((h0 + x0).flatten(1, 2), 1))  # (B, C', 1, 2H, 2W)
            h, x = h[:, :, 1:], x[:, :, 1:]
        if h.shape[2]:  # the shortcut is unpacked before repeating: phase p, channel k <- x channel (p, k // r)
            xr = x.unflatten(1, (4 * rt, x.shape[1] // (4 * rt))).repeat_interleave(self.repeats, 2).flatten(1, 2)
            parts.append(depth_to_space(h.add_(xr), rt))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


class Attention(nn.Module):
    """Single-head self-attention over all pixels, frame t attending to frames <= t; residual added. q, k, v and
    proj_out are 1x1x1 convs (official keys), computed as linear maps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(channels)
        self.q = nn.Conv3d(channels, channels, 1)
        self.k = nn.Conv3d(channels, channels, 1)
        self.v = nn.Conv3d(channels, channels, 1)
        self.proj_out = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        hs = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c)  # (B, T, HW, C)
        q, k, v = (F.linear(hs, m.weight.reshape(c, c), m.bias) for m in (self.q, self.k, self.v))
        out = causal_frame_attention(q, k, v, state, self)  # (B, T, HW, C)
        out = F.linear(out, self.proj_out.weight.reshape(c, c), self.proj_out.bias)
        return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3).contiguous().add_(x)  # (B, C, T, H, W)


class MidBlock(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = Attention(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def layers(self) -> list[nn.Module]:
        return [self.block_1, self.attn_1, self.block_2]


class Level(nn.Module):
    """One resolution: `block` resnets, then an optional `downsample` (encoder) or `upsample` (decoder)."""

    def __init__(self, c_in: int, width: int, n: int, resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if j == 0 else width, width) for j in range(n))
        self.resample_name = name
        if resample is not None:
            setattr(self, name, resample)

    def layers(self) -> list[nn.Module]:
        resample = getattr(self, self.resample_name, None)
        return [*self.block, *([resample] if resample is not None else [])]


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> (B, 2*latent, (T-1)/4+1, H/16, W/16): moments (mean, logvar)."""

    def __init__(self, cfg: VAE15Config) -> None:
        super().__init__()
        ch = cfg.block_out_channels
        self.group = ch[-1] // (2 * cfg.latent_channels)  # channels averaged into each output channel (shortcut)
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0])
        self.down = nn.ModuleList(
            Level(c_in, width, cfg.layers_per_block, Downsample(*d) if d else None, "downsample")
            for c_in, width, d in cfg.encoder_plan()
        )
        self.mid = MidBlock(ch[-1])
        self.norm_out = RMSNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        x = self.conv_in(x, state)
        for layer in [m for level in self.down for m in level.layers()] + self.mid.layers():
            x = layer(x, state)
        shortcut = x.unflatten(1, (x.shape[1] // self.group, self.group)).mean(2)  # (B, 2*latent, T, h, w)
        return self.conv_out.run(RMSInput(x, norm=self.norm_out), state).add_(shortcut)


class Decoder(nn.Module):
    """(B, latent, T, h, w) -> (B, 3, 4(T-1)+1, 16h, 16w); with a `state`, a chunk after the first gives 4T frames."""

    def __init__(self, cfg: VAE15Config) -> None:
        super().__init__()
        plan = cfg.decoder_plan()
        c0 = plan[0][1]
        self.repeats = c0 // cfg.latent_channels  # the input shortcut repeats every latent channel this often
        self.conv_in = CausalConv3d(cfg.latent_channels, c0)
        self.mid = MidBlock(c0)
        self.up = nn.ModuleList(
            Level(c_in, width, cfg.layers_per_block + 1, Upsample(*u) if u else None, "upsample")
            for c_in, width, u in plan
        )
        c_last = plan[-1][1]  # the last level never resamples (VAE15Config checks the level count)
        self.norm_out = RMSNorm(c_last)
        self.conv_out = CausalConv3d(c_last, cfg.out_channels)

    def forward(self, z: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        x = self.conv_in(z, state).add_(z.repeat_interleave(self.repeats, 1))
        for layer in self.mid.layers() + [m for level in self.up for m in level.layers()]:
            x = layer(x, state)  # layer by layer: a level would hold its input until its last resnet
        return self.conv_out.run(RMSInput(x, norm=self.norm_out), state)


# ---------------------------------------------------------------------------------------------------------------------
# The model


class HYVideo15VAE(CausalVAE):
    """Encoder + decoder of the HunyuanVideo 1.5 VAE with optional tiling (`self.tiling`, see TilingConfig15).

    decode(z): unscaled z (B, 32, T, h, w) -> video (B, 3, 4(T-1)+1, 16h, 16w), nominally in [-1, 1].
    decode_latents(latents): the same for DiT latents (divides by config.scaling_factor).
    encode(video): (B, 3, 4k+1, H, W) in [-1, 1], H and W multiples of 16 -> DiagonalGaussian over unscaled z.
    """

    def __init__(self, config: VAE15Config, tiling: TilingConfig15 | None = None) -> None:
        super().__init__()
        self.config = config
        self.tiling = tiling or TilingConfig15()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # measured on the CPU (docs/DESIGN.md §19): oneDNN reads channels-last inputs without a reorder, and a conv
        # cut into 1-frame time slices re-reads its padding frames and copies them forward for every frame
        self.set_channels_last(True).set_min_slice(MIN_SLICE_FRAMES)

    # -- public API ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """video (B, 3, T, H, W) in [-1, 1], T = 4k + 1, H and W multiples of 16 -> posterior over unscaled z."""
        tc, s = self.config.time_compression_ratio, self.config.spatial_compression_ratio
        if (video.shape[2] - 1) % tc or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"video (B, C, T, H, W) needs T = {tc}k + 1 and H, W multiples of {s}: {video.shape}")
        return DiagonalGaussian.from_moments(self._encode(self._in(video)).contiguous())

    def decode_steps(self, shape: Sequence[int]) -> int:
        """Decoder passes `decode` makes for latents of `shape` (B, C, T, h, w) under the current tiling: spatial
        tiles x chunks per tile; 1 when untiled or when everything fits one tile and one chunk."""
        t, s = self.tiling, self.config.spatial_compression_ratio
        if not t.enabled:
            return 1
        frames, h, w = shape[2], shape[3], shape[4]
        size, stride = t.tile_size // s, t.tile_stride // s
        space = 1 if max(h, w) <= size else len(range(0, h, stride)) * len(range(0, w, stride))
        return space * (len(self._chunk_starts(frames)) if t.mode == "chunked" else 1)

    # -- internals -------------------------------------------------------------------------------------------------
    def _decode_pass(self, z: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        return self.decoder(z, state)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        t, s = self.tiling, self.config.spatial_compression_ratio
        if not t.enabled:
            return self.encoder(x)
        space = self._encode_chunked
        if t.encode_tiles and max(x.shape[3], x.shape[4]) > t.tile_size:
            blend, out_hw = (t.tile_size - t.tile_stride) // s, (x.shape[3] // s, x.shape[4] // s)

            def space(v: torch.Tensor) -> torch.Tensor:
                return tile_space(
                    v, self._encode_chunked, t.tile_size, t.tile_stride, t.tile_stride // s, blend, out_hw
                )

        return space(x)

    def _encode_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """Encode 4 * chunk_latents frames at a time (the first chunk one frame more), carrying the stream state."""
        tc = self.config.time_compression_ratio
        starts = self._chunk_starts(self.config.latent_frames(x.shape[2]))
        if len(starts) == 1:
            return self.encoder(x)
        state: StreamState = {}
        bounds = [0, *(tc * (i - 1) + 1 for i in starts[1:]), x.shape[2]]  # latent i >= 1 <- frames 4i-3 .. 4i
        return torch.cat([self.encoder(x[:, :, a:b], state) for a, b in pairwise(bounds)], 2)

    def _decode(self, z: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        t, s = self.tiling, self.config.spatial_compression_ratio
        if not t.enabled:
            return step(z)

        def all_frames(v: torch.Tensor) -> torch.Tensor:  # one spatial tile (B, 32, T, h, w) -> (B, 3, F, 16h, 16w)
            if t.mode == "tiles" or len(self._chunk_starts(v.shape[2])) == 1:
                return step(v)
            return self._decode_chunked(v, step)

        size, stride = t.tile_size // s, t.tile_stride // s
        if max(z.shape[3], z.shape[4]) <= size:
            return all_frames(z)
        out_hw = (z.shape[3] * s, z.shape[4] * s)
        return tile_space(z, all_frames, size, stride, t.tile_stride, t.tile_size - t.tile_stride, out_hw)


def build_vae15(config: VAE15Config, device: torch.device | str = "meta") -> HYVideo15VAE:
    """Construct without allocating weights (meta) so a state dict can be assigned in place."""
    with torch.device(device):
        return HYVideo15VAE(config)
