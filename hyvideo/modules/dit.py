"""HYVideo-T/2 diffusion transformer (docs/DESIGN.md §2). Attribute names equal the official checkpoint keys.

Data flow (B batch, C hidden, Li image tokens, Lt text tokens):
    img = img_in(latents)                       (B, Li, C)      tokens t-major over the (T, H/2, W/2) grid
    txt = txt_in(llm_states, t, mask)           (B, Lt, C)
    vec = time_in(t) + vector_in(clip) [+ guidance_in(g)]   (B, C)
    double_blocks: separate weights per stream, joint attention over cat(img, txt)
    single_blocks: one stream over cat(img, txt)
    final_layer on the image tokens -> unpatchify -> (B, out, T, H, W)

Image-to-video with token_replace (docs/DESIGN.md §17.2): the first th*tw image tokens (latent frame 0, the clean
image) take their shift/scale/gate from a second vector, time_in(0) + vector_in(clip), through the same modulation
weights; everything else (text stream, other image tokens, final layer) uses vec. `Context.first` carries it.

HunyuanVideo 1.5 is the same class with another configuration (docs/DESIGN.md §18): q/k/v as three Linears per
stream, no single blocks, no vector_in/guidance_in, vec = time_in(t) [+ time_r_in(t_r)], and a context of three
streams [vision_in(SigLIP) | byt5_in(glyph byT5) | txt_in(Qwen)], each + its cond_type_embedding row, given
to the blocks as the text tokens (`ExtraInputs`).

The forward reads nothing back to the host: which text positions are padding is decided once per mask tensor
(`TextLayout`, one read of the mask, cached like the RoPE tables), not every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hyvideo.config import DiTConfig
from hyvideo.modules.attention import KeyMask, attention
from hyvideo.modules.embeddings import (
    RIFLEX_K,
    RIFLEX_MARGIN,
    ByT5Mapper,
    MLPEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    VisionProjection,
    apply_rope,
    riflex_applies,
    rope_freqs,
    rope_table,
)
from hyvideo.modules.layers import MLP, Modulation, RMSNorm, layer_norm, modulate
from hyvideo.modules.token_refiner import TokenRefiner

REFINER_MLP_RATIO = 4.0  # the release fixes the refiner MLP at 4x, whatever the blocks' mlp_ratio
# text layouts cached per DiT: the masks (prompt and negative prompt; 1.5: Qwen and byT5 each) of the current and
# recent videos
MAX_LAYOUTS = 16
COND_QWEN, COND_BYT5, COND_VISION = 0, 1, 2  # rows of the 1.5 cond_type_embedding


@dataclass(frozen=True)
class ExtraInputs:
    """HunyuanVideo 1.5 inputs beyond the v1 signature (docs/DESIGN.md §18.2)."""

    byt5_states: torch.Tensor | None  # (B, Lb, byt5_dim) glyph byT5 states, or None (no quoted text: no tokens)
    byt5_mask: torch.Tensor | None  # (B, Lb) int64 1 = token
    vision_states: torch.Tensor | None  # (B, Lv, vision_dim) SigLIP states; None = text-to-video (no vision tokens)
    t_r: torch.Tensor | None = None  # (B,) meanflow second timestep in [0, 1000]; None unless cfg.meanflow


@dataclass
class Context:
    """What every block needs besides its input, built once per forward."""

    rope: torch.Tensor  # (Li, D/2) complex rotations for the image tokens
    mask: KeyMask | None  # over cat(img, txt) keys; None when no padding remains
    backend: str  # attention backend name
    # the joint-attention function the blocks call, (q, k, v, mask, backend) -> (B, L, H*D); a wrapper (e.g.
    # sequence parallelism) swaps it to change how attention is computed without touching the blocks
    attn: Callable[..., torch.Tensor] = attention
    first: FirstFrame | None = None  # token_replace only: the clean first frame's own modulation


@dataclass(frozen=True)
class FirstFrame:
    """token_replace conditioning: the leading `tokens` image tokens are latent frame 0 (the clean image latent)
    and are modulated by `vec` instead of the forward's vec."""

    vec: torch.Tensor  # (B, C) time_in(0) + vector_in(clip): timestep 0, no guidance term
    tokens: int  # image tokens of frame 0 in this sequence: th * tw (a sequence-parallel chunk holds fewer, or 0)


class StreamModulation:
    """One block's modulation vectors for one stream, each (B, C), in chunk order (shift, scale, gate per branch).
    With a `FirstFrame`, the first `first.tokens` tokens use the vectors its vec gives through the same Linear."""

    def __init__(self, mod: Modulation, vec: torch.Tensor, first: FirstFrame | None = None) -> None:
        self.v = mod(vec)
        self.n = 0 if first is None else first.tokens
        self.tr = mod(first.vec) if self.n else None

    def modulate(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        """x (B, L, C) * (1 + scale) + shift of `branch` (0: attention, 1: MLP)."""
        i, n = 3 * branch, self.n
        if self.tr is None:
            return modulate(x, self.v[i], self.v[i + 1])
        return torch.cat(
            [modulate(x[:, :n], self.tr[i], self.tr[i + 1]), modulate(x[:, n:], self.v[i], self.v[i + 1])], 1
        )

    def gated_add(self, x: torch.Tensor, y: torch.Tensor, branch: int) -> torch.Tensor:
        """x + gate * y for `branch`; x, y (B, L, C)."""
        i, n = 3 * branch + 2, self.n
        if self.tr is None:
            return torch.addcmul(x, self.v[i][:, None], y)  # one pass
        return torch.cat(
            [
                torch.addcmul(x[:, :n], self.tr[i][:, None], y[:, :n]),
                torch.addcmul(x[:, n:], self.v[i][:, None], y[:, n:]),
            ],
            1,
        )


def _qk_norm(cfg: DiTConfig) -> nn.Module:
    return RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm == "rms_norm" else nn.Identity()


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, joined only in attention; RoPE on image q/k."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        C, self.heads, self.eps = cfg.hidden_size, cfg.heads, cfg.norm_eps
        self.split_qkv = cfg.split_qkv
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", Modulation(C, 6))
            if cfg.split_qkv:  # 1.5: three Linears (the checkpoint keeps them apart)
                for x in "qkv":
                    setattr(self, f"{s}_attn_{x}", nn.Linear(C, C))
            else:
                setattr(self, f"{s}_attn_qkv", nn.Linear(C, 3 * C))
            setattr(self, f"{s}_attn_q_norm", _qk_norm(cfg))
            setattr(self, f"{s}_attn_k_norm", _qk_norm(cfg))
            setattr(self, f"{s}_attn_proj", nn.Linear(C, C))
            setattr(self, f"{s}_mlp", MLP(C, cfg.mlp_hidden))

    def _qkv(self, s: str, x: torch.Tensor, mod: StreamModulation):
        h = mod.modulate(layer_norm(x, self.eps), 0)
        if self.split_qkv:
            q, k, v = [getattr(self, f"{s}_attn_{n}")(h).unflatten(-1, (self.heads, -1)) for n in "qkv"]  # (B,L,H,D)
        else:
            q, k, v = rearrange(getattr(self, f"{s}_attn_qkv")(h), "B L (K H D) -> K B L H D", K=3, H=self.heads)
        return getattr(self, f"{s}_attn_q_norm")(q), getattr(self, f"{s}_attn_k_norm")(k), v

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, ctx: Context):
        # img (B, Li, C), txt (B, Lt, C), vec (B, C); the text stream never takes the first-frame modulation
        i_mod, t_mod = StreamModulation(self.img_mod, vec, ctx.first), StreamModulation(self.txt_mod, vec)
        iq, ik, iv = self._qkv("img", img, i_mod)
        tq, tk, tv = self._qkv("txt", txt, t_mod)
        iq, ik = apply_rope(iq, ctx.rope), apply_rope(ik, ctx.rope)
        out = ctx.attn(
            torch.cat([iq, tq], 1), torch.cat([ik, tk], 1), torch.cat([iv, tv], 1), ctx.mask, ctx.backend
        )  # (B, Li+Lt, C)
        i_out, t_out = out.split([img.shape[1], txt.shape[1]], dim=1)
        img = i_mod.gated_add(img, self.img_attn_proj(i_out), 0)  # x + gate * f(x)
        img = i_mod.gated_add(img, self.img_mlp(i_mod.modulate(layer_norm(img, self.eps), 1)), 1)
        txt = t_mod.gated_add(txt, self.txt_attn_proj(t_out), 0)
        txt = t_mod.gated_add(txt, self.txt_mlp(t_mod.modulate(layer_norm(txt, self.eps), 1)), 1)
        return img, txt


class SingleStreamBlock(nn.Module):
    """One Linear gives qkv and the MLP input in parallel; linear2 maps cat(attn, gelu(mlp)) back."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        C, self.heads, self.eps = cfg.hidden_size, cfg.heads, cfg.norm_eps
        self.mlp_hidden = cfg.mlp_hidden
        self.linear1 = nn.Linear(C, 3 * C + self.mlp_hidden)
        self.linear2 = nn.Linear(C + self.mlp_hidden, C)
        self.q_norm = _qk_norm(cfg)
        self.k_norm = _qk_norm(cfg)
        self.modulation = Modulation(C, 3)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, ctx: Context, keep: int | None = None) -> torch.Tensor:
        """x (B, Li+Lt, C), image tokens first -> (B, Li+Lt, C), or (B, keep, C): only the first `keep` tokens'
        outputs (the last block's text outputs are never used; attention still sees every token)."""
        mod = StreamModulation(self.modulation, vec, ctx.first)  # image tokens first: frame 0 leads
        qkv, mlp = self.linear1(mod.modulate(layer_norm(x, self.eps), 0)).split(
            [3 * x.shape[-1], self.mlp_hidden], dim=-1
        )
        q, k, v = rearrange(qkv, "B L (K H D) -> K B L H D", K=3, H=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        Li = ctx.rope.shape[0]  # RoPE on the image tokens only, written in place (no copy of the text part)
        q[:, :Li], k[:, :Li] = apply_rope(q[:, :Li], ctx.rope), apply_rope(k[:, :Li], ctx.rope)
        out = ctx.attn(q, k, v, ctx.mask, ctx.backend)  # (B, L, C)
        if keep is not None:
            x, out, mlp = x[:, :keep], out[:, :keep], mlp[:, :keep]
        return mod.gated_add(x, linear_of_cat(self.linear2, out, F.gelu(mlp, approximate="tanh")), 0)


class FinalLayer(nn.Module):
    """Modulated LayerNorm then Linear to pt*ph*pw*out values per token (ordered c, pt, ph, pw)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        pt, ph, pw = cfg.patch_size
        self.linear = nn.Linear(cfg.hidden_size, pt * ph * pw * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear(modulate(layer_norm(x, self.eps), shift, scale))


class HYVideoDiT(nn.Module):
    """forward(latents (B,16,T,H,W), t (B,), text (B,L,4096), mask (B,L), clip (B,768), guidance (B,)|None);
    HunyuanVideo 1.5: forward(latents (B,65,T,H,W), t, qwen (B,L,3584), mask, None, None, extra=ExtraInputs)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.hidden_size
        self.img_in = PatchEmbed(cfg.patch_size, cfg.in_channels, C)
        self.txt_in = TokenRefiner(cfg.text_states_dim, C, cfg.heads, cfg.depth_refiner, REFINER_MLP_RATIO)
        self.time_in = TimestepEmbedder(C)
        self.vector_in = MLPEmbedder(cfg.text_pool_dim, C) if cfg.text_pool_dim else None
        self.guidance_in = TimestepEmbedder(C) if cfg.guidance_embed else None
        self.time_r_in = TimestepEmbedder(C) if cfg.meanflow else None
        self.byt5_in = ByT5Mapper(cfg.byt5_dim, cfg.byt5_hidden, C) if cfg.byt5_dim else None
        self.vision_in = VisionProjection(cfg.vision_dim, C) if cfg.vision_dim else None
        self.cond_type_embedding = nn.Embedding(3, C) if cfg.cond_type_embed else None
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(cfg) for _ in range(cfg.depth_double)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(cfg) for _ in range(cfg.depth_single)])
        self.final_layer = FinalLayer(cfg)
        self.attn_backend = "auto"
        self.riflex_k: int | None = None  # RIFLEx: the temporal RoPE component lowered for long videos (`riflex_k`)
        self._rope_cache: dict[tuple, torch.Tensor] = {}
        self._layouts: dict[int, tuple[torch.Tensor, TextLayout | None]] = {}  # id(mask) -> (mask, its layout)

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """RoPE table for a token grid, cached per (grid, device, RIFLEx choice): shape-only work is never redone per
        step."""
        key = (grid, str(device), self.riflex_k)
        if key not in self._rope_cache:
            table = rope_table(grid, self.cfg.rope_axes, self.cfg.rope_theta, device, riflex_k=self.riflex_k)
            self._rope_cache[key] = table
        return self._rope_cache[key]

    def text_layout(self, mask: torch.Tensor | None) -> TextLayout | None:
        """The `TextLayout` of a text mask, read once per mask tensor (the one host sync it costs happens on the
        first step of a video, not every step). Keyed by the tensor's identity, which the cache holds, so an id is
        never reused while cached; a mask must not be modified in place after its first forward."""
        if mask is None:
            return None
        hit = self._layouts.get(id(mask))
        if hit is not None and hit[0] is mask:
            return hit[1]
        if len(self._layouts) >= MAX_LAYOUTS:  # oldest first: the masks of videos already done
            del self._layouts[next(iter(self._layouts))]
        layout = text_layout(mask)
        self._layouts[id(mask)] = (mask, layout)
        return layout

    def embed(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_pooled: torch.Tensor | None,
        guidance: torch.Tensor | None,
        *,
        extra: ExtraInputs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Context]:
        """Everything before the blocks: (img (B,Li,C), txt (B,Lt,C), vec (B,C), Context)."""
        img, vec, t = self.embed_image(x, t, text_pooled, guidance, extra=extra)
        txt, ctx = self.embed_text(text_states, text_mask, t, x, text_pooled, extra=extra)
        return img, txt, vec, ctx

    def embed_image(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_pooled: torch.Tensor | None,
        guidance: torch.Tensor | None,
        *,
        extra: ExtraInputs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image tokens and the conditioning vector: (img (B,Li,C), vec (B,C), t expanded to (B,)).
        vec = time_in(t) [+ vector_in(pooled)] [+ guidance_in(g)] [+ time_r_in(t_r), meanflow with extra.t_r]."""
        B = x.shape[0]
        self.token_grid(x)  # checks the latent grid divides by the patch size
        dtype = self.img_in.proj.weight.dtype
        t = t.expand(B) if t.numel() == 1 else t
        vec = self.time_in(t)
        if self.vector_in is not None:
            if text_pooled is None:
                raise ValueError("this DiT has a pooled text input (vector_in): pass text_pooled")
            vec = vec + self.vector_in(text_pooled.to(dtype))
        if self.guidance_in is not None:
            if guidance is None:
                raise ValueError("this DiT has a guidance embedding: pass guidance (embedded cfg scale x 1000)")
            vec = vec + self.guidance_in(guidance.expand(B) if guidance.numel() == 1 else guidance)
        t_r = None if extra is None else extra.t_r
        if t_r is not None:  # both references add time_r_in only when a t_r is given
            if self.time_r_in is None:
                raise ValueError("extra.t_r given, but this DiT has no meanflow embedder (time_r_in)")
            vec = vec + self.time_r_in(t_r.expand(B) if t_r.numel() == 1 else t_r)
        return self.img_in(x.to(dtype)), vec, t

    def embed_text(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        t: torch.Tensor,
        x: torch.Tensor,
        text_pooled: torch.Tensor | None = None,
        *,
        extra: ExtraInputs | None = None,
    ) -> tuple[torch.Tensor, Context]:
        """Refined text tokens (B,Lt,C) with padding dropped, and the Context for latents x (B,in,T,H,W), t (B,).
        A token_replace DiT needs `text_pooled` (B, pool) for the first frame's modulation vector. A 1.5 DiT puts
        the vision and byT5 tokens of `extra` before the refined Qwen tokens: [vision | byT5 | Qwen]."""
        grid = self.token_grid(x)
        dtype = self.img_in.proj.weight.dtype
        text_states, valid = apply_layout(text_states.to(dtype), self.text_layout(text_mask))
        txt = self.txt_in(text_states, t, valid, self.attn_backend)
        if self.byt5_in is not None or self.vision_in is not None:
            txt, valid = self.context15(txt, valid, extra, dtype)
        Li = math.prod(grid)
        mask = None if valid is None else KeyMask(F.pad(valid, (Li, 0), value=True))  # (B, Li+Lt)
        first = self.first_frame(t, text_pooled, grid)
        return txt, Context(self.rope(grid, x.device), mask, self.attn_backend, first=first)

    def context15(
        self, qwen: torch.Tensor, qwen_valid: torch.Tensor | None, extra: ExtraInputs | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The 1.5 context [vision | byT5 | Qwen] (B, Lv+Lb'+Lq', C) and its validity (B, L) or None.

        Each stream takes its cond_type_embedding row. Positions that are padding in every sample are gone before
        this (each mask's `TextLayout`, read once per mask tensor), so batch 1 needs no mask at all; the references
        move each sample's valid tokens first instead, which gives the same attention (text tokens carry no
        position). No vision states (text-to-video) means no vision tokens: the references mask them all out."""
        if extra is None:
            raise ValueError("a HunyuanVideo 1.5 DiT needs extra=ExtraInputs(byt5_states, byt5_mask, vision_states)")
        parts = [self._typed(qwen, COND_QWEN)]  # prepended below: the order is [vision | byT5 | Qwen]
        valids = [qwen_valid]
        if extra.byt5_states is not None and self.byt5_in is not None:
            states, v = apply_layout(extra.byt5_states.to(dtype), self.text_layout(extra.byt5_mask))
            if states.shape[1]:
                parts.insert(0, self._typed(self.byt5_in(states), COND_BYT5))
                valids.insert(0, v)
        if extra.vision_states is not None:
            if self.vision_in is None:
                raise ValueError("vision_states given, but this DiT has no vision_in")
            parts.insert(0, self._typed(self.vision_in(extra.vision_states.to(dtype)), COND_VISION))
            valids.insert(0, None)  # every image token is valid
        if len(parts) == 1:
            return parts[0], qwen_valid
        if all(v is None for v in valids):
            return torch.cat(parts, 1), None
        B = qwen.shape[0]
        full = [
            torch.ones(B, p.shape[1], dtype=torch.bool, device=p.device) if v is None else v
            for p, v in zip(parts, valids, strict=True)
        ]
        return torch.cat(parts, 1), torch.cat(full, 1)

    def _typed(self, tokens: torch.Tensor, kind: int) -> torch.Tensor:
        """tokens (B, L, C) + row `kind` of the cond_type_embedding (unchanged without one)."""
        if self.cond_type_embedding is None:
            return tokens
        return tokens + self.cond_type_embedding.weight[kind]

    def first_frame(
        self, t: torch.Tensor, text_pooled: torch.Tensor | None, grid: tuple[int, int, int]
    ) -> FirstFrame | None:
        """token_replace: FirstFrame(time_in(0) + vector_in(clip), th * tw) for t (B,), clip (B, pool); the guidance
        embedding is not added (the image frame is clean, whatever the guidance). None for other DiTs."""
        if self.cfg.image_condition != "token_replace":
            return None
        if text_pooled is None:
            raise ValueError("a token_replace DiT needs text_pooled for the first frame's modulation")
        vec = self.time_in(torch.zeros_like(t)) + self.vector_in(text_pooled.to(self.img_in.proj.weight.dtype))
        return FirstFrame(vec, grid[1] * grid[2])

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The (T, H, W) token grid of latents x (B, in, T, H, W): each axis divided by the patch size."""
        pt, ph, pw = self.cfg.patch_size
        T, H, W = x.shape[2:]
        if T % pt or H % ph or W % pw:
            raise ValueError(f"latent grid {(T, H, W)} is not divisible by the patch size {self.cfg.patch_size}")
        return T // pt, H // ph, W // pw

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        T, H, W = grid
        return rearrange(out, "B (T H W) (c pt ph pw) -> B c (T pt) (H ph) (W pw)", T=T, H=H, W=W, pt=pt, ph=ph, pw=pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_pooled: torch.Tensor | None,
        guidance: torch.Tensor | None = None,
        *,
        extra: ExtraInputs | None = None,
    ) -> torch.Tensor:
        """Velocity for latents x (B, in, T, H, W) at timestep t (B,) in [0, 1000]; returns (B, out, T, H, W).
        HunyuanVideo 1.5: text_pooled and guidance None, the byT5 / vision / t_r inputs in `extra`."""
        img, txt, vec, ctx = self.embed(x, t, text_states, text_mask, text_pooled, guidance, extra=extra)
        return self.unpatchify(self.transformer(img, txt, vec, ctx), self.token_grid(x))

    def transformer(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Blocks and final layer on embedded tokens: img (B, Li, C) -> (B, Li, pt*ph*pw*out); text is dropped."""
        return self.final_layer(self.run_blocks(img, txt, vec, ctx), vec)

    def run_blocks(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, ctx: Context) -> torch.Tensor:
        """All double then single blocks: the image tokens (B, Li, C) after them (text tokens dropped)."""
        Li = img.shape[1]
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, ctx)
        if not self.single_blocks:  # 1.5: double blocks only
            return img
        h = torch.cat([img, txt], 1)  # (B, Li+Lt, C)
        last = len(self.single_blocks) - 1
        for i, block in enumerate(self.single_blocks):
            h = block(h, vec, ctx, keep=Li if i == last else None)
        return h[:, :Li]


def riflex_k(mode: str, video_length: int, cfg: DiTConfig) -> int | None:
    """The temporal RoPE component RIFLEx lowers for a video of `video_length` frames, or None (`--riflex`).

    off: None. on: RIFLEX_K, which the temporal axis must have (ValueError otherwise). auto: RIFLEX_K when the video is
    longer than the trained 129 frames AND the rule lowers that component's frequency; from 133 to 177 frames
    0.9 * 2 pi / L is above the original 1/8 (L latent frames), so the rule would shorten the period it means to
    lengthen, and auto leaves the table alone."""
    if mode == "on":
        pairs = cfg.rope_axes[0] // 2
        if pairs < RIFLEX_K:
            raise ValueError(f"the DiT's temporal RoPE has {pairs} frequency pair(s); RIFLEx lowers pair {RIFLEX_K}")
        return RIFLEX_K
    if not riflex_applies(mode, video_length):
        return None
    latent_frames = ((video_length - 1) // 4 + 1) // cfg.patch_size[0]  # temporal token positions
    if cfg.rope_axes[0] // 2 < RIFLEX_K:
        return None
    original = float(rope_freqs(cfg.rope_axes[0], cfg.rope_theta)[RIFLEX_K - 1])
    return RIFLEX_K if RIFLEX_MARGIN * 2 * math.pi / latent_frames < original else None


def linear_of_cat(linear: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """linear(cat([a, b], -1)) without building the concatenation: two matmuls into one output, the weight split
    by columns (strided views, no copy). a (..., Ka), b (..., Kb) -> (..., out). Layers other than a plain
    nn.Linear (fp8, LoRA wrappers) get the concatenation."""
    if type(linear) is not nn.Linear:
        return linear(torch.cat([a, b], -1))
    ka, w = a.shape[-1], linear.weight  # w (out, Ka+Kb)
    a2, b2 = a.reshape(-1, ka), b.reshape(-1, b.shape[-1])
    out = a2 @ w[:, :ka].t() if linear.bias is None else torch.addmm(linear.bias, a2, w[:, :ka].t())
    torch.addmm(out, b2, w[:, ka:].t(), out=out)  # accumulate in place (addmm.out: FLOP counters see it)
    return out.view(*a.shape[:-1], -1)


@dataclass(frozen=True)
class TextLayout:
    """Which text positions a forward keeps, decided on the host once per mask (a mask (B, L) of 1 = token)."""

    keep: slice | torch.Tensor  # positions that are a token in some sample: a slice, or indices (L',) on the device
    valid: torch.Tensor | None  # (B, L') bool where some kept sample still has padding (batch > 1); else None


def text_layout(mask: torch.Tensor | None) -> TextLayout | None:
    """Drop the text positions that are padding in every sample (for batch 1: all padding, so no mask is needed and
    fused kernels apply); keep a mask only where samples of different lengths remain. Reads the mask on the host
    (one sync); None when there is no mask."""
    if mask is None:
        return None
    valid = mask.bool()
    host = valid.cpu()
    keep = host.any(0)  # (L,)
    n = int(keep.sum())
    if bool(keep[:n].all()):  # the usual right padding: a prefix, sliced without an index
        index: slice | torch.Tensor = slice(0, n)
    else:
        index = keep.nonzero().squeeze(1).to(mask.device)
    return TextLayout(index, None if bool(host[:, keep].all()) else valid[:, index])


def apply_layout(states: torch.Tensor, layout: TextLayout | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """states (B, L, D) -> (the kept positions (B, L', D), their validity (B, L') or None); no host sync."""
    if layout is None:
        return states, None
    keep = layout.keep
    kept = states[:, keep] if isinstance(keep, slice) else states.index_select(1, keep)
    return kept, layout.valid


def drop_padding(states: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Remove text positions that are padding in every sample: (states (B, L', D), valid (B, L') or None), as the
    forward does (`text_layout` then `apply_layout`)."""
    return apply_layout(states, text_layout(mask))
