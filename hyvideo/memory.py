"""Memory preflight: estimate peak device memory and host RAM of a request before anything loads.

The pipeline runs three stages one after another, each freeing its component before the next loads, so
    device peak = max over stages (weights on the device + activations at the stage's peak)
    host peak   = process baseline + max over stages (host-side weights, mmap pages touched while loading, pinned
                  offload copies) [+ the device peak itself when the device is the CPU]
Weights come from parameter counts: the DiT config (built on the meta device), the text encoders' config.json files
(Llama and CLIP-text formulas) and the VAE config. Activations come from token and pixel counts with per-stage
coefficients (`DIT_ACT_*`, `VAE_ACT`) that are counted from the code and calibrated against measured CPU peaks
(tests/test_memory.py checks full CPU runs stay within 25%, and every term exactly for the released model).
Pinned offload copies are counted as pinned: in the compute dtype, packed in power-of-two slabs (`hyvideo.pinned`).
One `estimate` serves both families: HunyuanVideo 1.5's sizes (`full_size_sizes15`, `sizes15`) say what differs (Qwen
and byT5 as the text encoders, SigLIP and the VAE encode as an I2V stage, 32 latent channels at 16x, the byT5 and
SigLIP context tokens), and its plan (`plan15`, `estimate15`) the real-CFG branches and the batch.

The check (`check_fits`) compares the device peak with the memory free on the run's device now (a display or
another process may hold the rest) and, on CUDA, the host peak of every process of the run on this machine with the
RAM available. `dry_run_lines` / `cheapest_fit` plan without running: the per-stage plan and the cheapest flag set
that fits a card (`card_capacity(GB)`), with the released model's sizes when no weights are present.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from loguru import logger

from hyvideo.checkpoints.dit import build_dit
from hyvideo.choices import HV15_VERSIONS
from hyvideo.config import DiTConfig
from hyvideo.errors import UsageError
from hyvideo.modules.vae import HYVideoVAE, TilingConfig, VAEConfig
from hyvideo.pinned import SlabPool, pinned_bytes, pooled_bytes
from hyvideo.quantization import fp8_layer_names
from hyvideo.utils.host_memory import proc_kb

if TYPE_CHECKING:
    from hyvideo.checkpoints.layout import ModelPaths
    from hyvideo.request import SampleRequest

GiB = 2**30
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

# DiT activations per token at a block's peak, in elements of the compute dtype. Counted in SingleStreamBlock: x,
# linear1's output (3C + M), normed/roped q and k, attention output, gelu(mlp), cat(attn, mlp), linear2 output
# -> 9C + 3M; measured on CPU (one forward, VmHWM growth, L = 9224 tokens, C = 512, M = 2C and 4C, fp32 and bf16):
# 9.4C + 3.9M, with the fp32 norm / RoPE temporaries. We use 10C + 4M.
DIT_ACT_C = 10
DIT_ACT_M = 4
# VAE decoder working set in first-level feature maps (C0 x frames x H x W of what is decoded at once), measured on
# CPU (VmHWM growth of one decode): ~8 maps untiled; with the default chunked tiling ~10 maps of one temporal chunk
# (5 frames) of one spatial tile (the chunk's activations, the carried causal-padding frames of every conv, heap
# slack), plus a fixed workspace. Fit to the mid VAE (C0 = 32) at 128x128 (184 MB) and 256x256 (559 MB, 33 frames).
VAE_ACT_UNTILED = 8
VAE_ACT_CHUNKED = 10
KERNEL_WORKSPACE = 75 * 2**20  # conv kernel scratch and allocator slack (oneDNN on CPU, cuDNN on CUDA), bytes
TEXT_TOKENS_EXTRA = 100  # template tokens cropped after the LLM (95 for the video template)
BLOCKS = ("double_blocks.", "single_blocks.")
FP8_SCALE_BYTES = 4  # one float32 scale per fp8 layer (a separate host tensor)


# ---------------------------------------------------------------------------------------------------------------
# What the estimate depends on
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """The request's memory-relevant choices (a `SampleRequest` gives one via `plan_from_request`)."""

    height: int
    width: int
    frames: int
    device: str = "cuda"  # "cpu": host RAM is the device
    precision: str = "bf16"  # DiT compute dtype
    vae_precision: str = "fp16"
    text_precision: str = "fp16"
    text_precision_2: str = "fp16"
    text_len: int = 256
    llm_skip: int = 2  # last LLM layers never built (hidden_state_skip_layer): neither weights nor compute
    use_fp8: bool = False
    offload: str = "none"  # none | model | block
    window: int = 2  # blocks resident under block offload
    vae_tiling: bool = True
    tile_size: int = 256  # VAE spatial tile edge (pixels); TilingConfig's default
    chunk_frames: int = 5  # VAE frames decoded at once in chunked tiling: 4 x chunk_latents + 1 (the first chunk)
    parallel: int = 1  # sequence-parallel degree (ulysses x ring): tokens per device = L / parallel
    shards: int = 1  # processes sharing the DiT block weights (torchrun --shard-weights, FSDP2): 1/shards each
    processes: int = 1  # processes on this machine (torchrun's local world): each holds its own host copies
    task: str = "t2v"  # "i2v" adds the image encoders' stage (SigLIP + VAE encode) where the model has one (1.5)
    batch: int = 1  # videos sampled together: the DiT's activations and the decoded videos scale with it
    real_cfg: bool = False  # a negative prompt is encoded and the DiT runs the unconditional branch too
    cfg_batched: bool = True  # with real_cfg: both branches in one forward (twice the activations), else one by one
    vision_precision: str = "fp16"  # SigLIP (I2V)


def plan_from_request(req: SampleRequest) -> MemoryPlan:
    """The memory-relevant choices of a request."""
    s, text, dit, decode, par = req.sampling, req.text, req.dit, req.decode, req.parallel
    tiling = TilingConfig()  # what the pipeline's enable_tiling() uses
    return MemoryPlan(
        height=s.height,
        width=s.width,
        frames=s.video_length,
        device=torch.device(req.runtime.device).type,
        precision=dit.precision,
        vae_precision=decode.vae_precision,
        text_precision=text.text_encoder_precision,
        text_precision_2=text.text_encoder_precision_2,
        text_len=text.text_len,
        llm_skip=text.hidden_state_skip_layer,
        use_fp8=dit.use_fp8,
        offload=req.runtime.offload,
        vae_tiling=decode.vae_tiling,
        tile_size=decode.vae_tile_size,
        chunk_frames=4 * tiling.chunk_latents + 1 if tiling.mode == "chunked" else tiling.tile_frames + 1,
        parallel=par.ulysses_degree * par.ring_degree,
        shards=weight_shards(req),
    )


def weight_shards(req: SampleRequest) -> int:
    """How many processes split the DiT block weights: the torchrun world with --shard-weights, unless fp8 or
    offloading (which load the weights replicated)."""
    plain = not req.dit.use_fp8 and req.runtime.offload == "none"
    world = req.parallel.world_size
    return world if world > 1 and plain and req.parallel.shard_weights else 1


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of the components (from configs, no weights read)."""

    dit_block_linear: int  # weights of the Linear layers inside the blocks (fp8-able)
    dit_block_other: int  # biases, norms inside the blocks
    dit_other: int  # embedders, token refiner, final layer
    dit_largest_block: tuple[int, int]  # (fp8-able weights, other) of the largest block
    dit_largest_linear: int  # elements of the largest block Linear weight (fp8 dequantisation transient)
    dit_hidden: int
    dit_mlp: int
    llm: int
    llm_hidden: int
    llm_layers: int
    llm_intermediate: int
    llm_layer: int  # parameters of one decoder layer
    clip: int
    vae: int
    vae_c0: int  # first-level decoder width (block_out_channels[0])
    dit_file_bytes: int = 0  # size of the DiT weight file(s): mmap pages touched while loading on the host
    dit_patch: tuple[int, int, int] = (1, 2, 2)
    dit_block_tensors: tuple[tuple[tuple[int, bool], ...], ...] = ()  # per block, per tensor: (numel, fp8-able)
    dit_other_tensors: tuple[int, ...] = ()  # numel of each tensor outside the blocks
    # Where the families differ (defaults: HunyuanVideo v1). `clip` above is the second text encoder: CLIP-L's text
    # tower for v1, byT5-small with the glyph tokens for 1.5.
    dit_out_channels: int = 16  # latent channels the DiT predicts
    dit_cond_channels: int = 0  # channels concatenated to the latents as the DiT's input (1.5: image latent + mask)
    context_extra: int = 0  # DiT context tokens beyond the LLM's text_len (1.5: byT5 256 + SigLIP 729)
    text_template: int = TEXT_TOKENS_EXTRA  # tokens the LLM reads beyond text_len (the template, cropped after)
    vae_spatial: int = 8  # VAE compression in space (1.5: 16) and time
    vae_temporal: int = 4
    vision: int = 0  # image encoder parameters (1.5: SigLIP so400m, I2V only); 0 = none
    vision_tokens: int = 0
    vision_hidden: int = 0
    vision_intermediate: int = 0
    llm_layer_tensors: tuple[int, ...] = ()  # numel of each tensor of one decoder layer (its pinned copy's slabs)
    llm_vision: int = 0  # the I2V LLaVA's vision tower + projector: on the device with the LLM, streamed or not

    @property
    def dit(self) -> int:
        return self.dit_block_linear + self.dit_block_other + self.dit_other


def dit_sizes(cfg: DiTConfig) -> dict[str, object]:
    """The DiT fields of `ModelSizes` for `cfg`, from the model built on the meta device."""
    model = build_dit(cfg, "meta")
    linear = set(fp8_layer_names(model))
    block_tensors = tuple(
        tuple(
            (p.numel(), f"{prefix}.{n}".rsplit(".", 1)[0] in linear and n.endswith(".weight"))
            for n, p in b.named_parameters()
        )
        for prefix, b in [
            *((f"double_blocks.{i}", b) for i, b in enumerate(model.double_blocks)),
            *((f"single_blocks.{i}", b) for i, b in enumerate(model.single_blocks)),
        ]
    )
    other_tensors = tuple(p.numel() for n, p in model.named_parameters() if not n.startswith(BLOCKS))
    return dit_fields(block_tensors, other_tensors, cfg.hidden_size, cfg.mlp_hidden, tuple(cfg.patch_size))


def dit_fields(
    block_tensors: tuple[tuple[tuple[int, bool], ...], ...],
    other_tensors: tuple[int, ...],
    hidden: int,
    mlp: int,
    patch: tuple[int, int, int],
) -> dict[str, object]:
    """The DiT fields of `ModelSizes` from the tensors of every block ((numel, fp8-able) each: the block Linear
    weights are the fp8-able ones) and the numel of every tensor outside the blocks. Shared by both families."""
    per_block = [
        (sum(n for n, lin in b if lin), sum(n for n, lin in b if not lin)) for b in block_tensors
    ]  # (fp8-able, other)
    return {
        "dit_block_tensors": block_tensors,
        "dit_other_tensors": other_tensors,
        "dit_block_linear": sum(lin for lin, _ in per_block),
        "dit_block_other": sum(other for _, other in per_block),
        "dit_other": sum(other_tensors),
        "dit_largest_block": max(per_block, key=sum) if per_block else (0, 0),
        "dit_largest_linear": max((n for b in block_tensors for n, lin in b if lin), default=0),
        "dit_hidden": hidden,
        "dit_mlp": mlp,
        "dit_patch": patch,
    }


def llm_params(cfg: dict) -> tuple[int, int, int, int, int]:
    """(parameters of the Llama / Qwen2 base model without LM head, hidden, layers, intermediate, parameters per
    layer) from its config.json (a multimodal config keeps the language model's in text_config)."""
    cfg = cfg.get("text_config") or cfg
    h, n = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    inter, vocab = int(cfg["intermediate_size"]), int(cfg["vocab_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads) * int(cfg.get("head_dim") or h // heads)
    qo = int(cfg.get("head_dim") or h // heads) * heads
    per_layer = h * qo * 2 + h * kv * 2 + 3 * h * inter + 2 * h
    # Qwen2 (and Qwen2.5-VL's language model) always has q/k/v biases, no output bias; its config has no flag
    if cfg.get("attention_bias") or str(cfg.get("model_type", "")).startswith("qwen2"):
        per_layer += qo + 2 * kv
    return vocab * h + n * per_layer + h, h, n, inter, per_layer


def llm_layer_tensors(cfg: dict) -> tuple[int, ...]:
    """numel of each tensor of one decoder layer, as `llm_params` counts them: q, k, v, o, gate, up, down, the two
    norms, then the q/k/v biases where the model has them."""
    cfg = cfg.get("text_config") or cfg
    h, inter, heads = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or h // heads)
    qo, kv = head_dim * heads, int(cfg.get("num_key_value_heads") or heads) * head_dim
    tensors = (h * qo, h * kv, h * kv, qo * h, h * inter, h * inter, inter * h, h, h)
    if cfg.get("attention_bias") or str(cfg.get("model_type", "")).startswith("qwen2"):
        tensors += (qo, kv, kv)
    return tensors


def llm_sizes(cfg: dict) -> dict[str, object]:
    """The LLM fields of `ModelSizes` from its config.json (all 0 without one)."""
    names = ("llm", "llm_hidden", "llm_layers", "llm_intermediate", "llm_layer")
    out: dict[str, object] = dict(zip(names, llm_params(cfg) if cfg else (0,) * len(names), strict=True))
    out["llm_layer_tensors"] = llm_layer_tensors(cfg) if cfg else ()
    out["llm_vision"] = llava_vision_params(cfg) if cfg else 0
    return out


# transformers' CLIPVisionConfig defaults, for the keys a saved LLaVA config.json may leave out
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "image_size": 224,
                        "patch_size": 32, "num_channels": 3}  # fmt: skip


def llava_vision_params(cfg: dict) -> int:
    """Parameters of a LLaVA's CLIP vision tower (`CLIPVisionModel`: patch and position embeddings, pre- and
    post-LayerNorm, the layers) and its projector (two Linears with biases, vision -> text width) from the LLaVA's
    config.json; 0 for any other config (a Qwen2.5-VL folder's vision tower is never loaded)."""
    if cfg.get("model_type") != "llava" or not cfg.get("vision_config"):
        return 0
    v = {**CLIP_VISION_DEFAULTS, **cfg["vision_config"]}
    h, i, n = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["num_hidden_layers"])
    p, c = int(v["patch_size"]), int(v["num_channels"])
    tokens = (int(v["image_size"]) // p) ** 2 + 1  # the patches and the class token
    layer = 4 * h + 4 * (h * h + h) + h * i + i + i * h + h  # two LayerNorms, q/k/v/out, MLP
    tower = c * p * p * h + h + tokens * h + 2 * h + n * layer + 2 * h
    text = int((cfg.get("text_config") or {}).get("hidden_size", 4096))
    feature_layers = cfg.get("vision_feature_layer", -2)
    width = h * (len(feature_layers) if isinstance(feature_layers, list) else 1)
    bias = bool(cfg.get("multimodal_projector_bias", True))
    return tower + width * text + text * text + (2 * text if bias else 0)


def clip_text_params(cfg: dict) -> int:
    """Parameters of CLIP's text tower from its config.json (a full CLIPModel config keeps it in text_config)."""
    cfg = cfg.get("text_config") or cfg
    h, n, inter = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"])
    vocab, pos = int(cfg["vocab_size"]), int(cfg.get("max_position_embeddings", 77))
    per_layer = 4 * (h * h + h) + 2 * h * inter + inter + h + 4 * h
    return vocab * h + pos * h + n * per_layer + 2 * h


def vae_params(vae_cfg: VAEConfig) -> int:

    with torch.device("meta"):
        return sum(p.numel() for p in HYVideoVAE(vae_cfg).parameters())


# ---------------------------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    name: str
    weights: int  # bytes of weights on the device during the stage
    activations: int  # bytes of activations / workspace at the stage's peak
    load: int = 0  # extra bytes on the device while loading only (a dtype conversion's second copy)
    host: int = 0  # host bytes during the stage when the device is not the host (mmap pages, pinned copies)

    @property
    def device(self) -> int:
        return self.weights + max(self.activations, self.load)


@dataclass(frozen=True)
class MemoryEstimate:
    plan: MemoryPlan
    stages: tuple[Stage, ...]
    baseline: int  # host RSS of the process before loading (runtime, libraries)
    notes: tuple[str, ...] = field(default=())

    @property
    def device_peak(self) -> int:
        """Peak on the device; on the CPU this is the host peak (the device is host RAM)."""
        if self.plan.device == "cpu":
            return self.host_peak
        return max(s.device for s in self.stages)

    @property
    def host_peak(self) -> int:
        """Peak host RAM of one process."""
        if self.plan.device == "cpu":
            return self.baseline + max(s.device for s in self.stages)
        return self.baseline + max(s.host for s in self.stages)

    @property
    def host_total(self) -> int:
        """Peak host RAM of all the run's processes on this machine (each holds its own host copies)."""
        return self.plan.processes * self.host_peak

    def lines(self) -> list[str]:
        """The plan per stage, device and host, one line each (logged by the preflight, printed by a dry run)."""
        p = self.plan
        mode = f"{p.precision}{' + fp8 weights' if p.use_fp8 else ''}, offload {p.offload}"
        if p.task != "t2v":
            mode = f"{p.task.upper()}, {mode}"
        if p.batch > 1:
            mode += f", batch {p.batch}"
        if p.real_cfg:
            mode += f", real CFG {'batched' if p.cfg_batched else 'one branch at a time'}"
        procs = f", {p.processes} processes: host {self.host_total / GiB:.1f} GiB in all" if p.processes > 1 else ""
        out = [
            f"memory estimate for {p.width}x{p.height}x{p.frames} ({mode}, VAE tiling {'on' if p.vae_tiling else 'off'}"
            f"{f' {p.tile_size} px' if p.vae_tiling else ''}{f', parallel {p.parallel}' if p.parallel > 1 else ''}): "
            f"peak {p.device} {self.device_peak / GiB:.1f} GiB, host {self.host_peak / GiB:.1f} GiB{procs}"
        ]
        for s in self.stages:
            out.append(
                f"  {s.name}: weights {s.weights / GiB:.2f} + activations {s.activations / GiB:.2f} GiB on {p.device}"
                + (f", host {s.host / GiB:.2f} GiB" if p.device != "cpu" else "")
            )
        return out


def dit_pinned(plan: MemoryPlan, sizes: ModelSizes) -> int:
    """Bytes of pinned host copies of the DiT on CUDA: offload "model" keeps one for the whole model, "block" one per
    block (`offload.Resident`) in slabs shared by all blocks; each is in the compute dtype (fp8-able weights 1 byte + a float32 scale with fp8)
    and packed into power-of-two slabs (`pinned.plan_slabs`)."""
    e = DTYPE_BYTES[plan.precision]

    def block_bytes(tensors: tuple[tuple[int, bool], ...]) -> list[int]:
        out = []
        for numel, fp8_able in tensors:
            out += [numel, FP8_SCALE_BYTES] if fp8_able and plan.use_fp8 else [numel * e]
        return out

    if plan.offload == "block":  # every block's copies in one shared pool (`offload.BlockStreamer`)
        groups = [block_bytes(b) for b in sizes.dit_block_tensors]
        largest = max((n for g in groups for n in g), default=0)
        return pooled_bytes(groups, SlabPool.for_largest(largest, pin=False).slab)
    if plan.offload == "model":
        blocks = [n for b in sizes.dit_block_tensors for n in block_bytes(b)]
        return pinned_bytes([n * e for n in sizes.dit_other_tensors] + blocks)
    return 0


def llm_pinned(plan: MemoryPlan, sizes: ModelSizes) -> int:
    """Bytes of pinned host copies of the LLM's streamed decoder layers on CUDA under block offload (the layers
    built, in the text precision), in one slab pool shared by the layers as the DiT's blocks
    (`offload.stream_layers`); 0 otherwise."""
    if plan.offload != "block" or plan.device == "cpu":
        return 0
    e = DTYPE_BYTES[plan.text_precision]
    layer = [n * e for n in sizes.llm_layer_tensors]
    layers = sizes.llm_layers - min(plan.llm_skip, sizes.llm_layers)
    return pooled_bytes([layer] * layers, SlabPool.for_largest(max(layer, default=0), pin=False).slab)


def estimate(plan: MemoryPlan, sizes: ModelSizes, baseline: int = 0) -> MemoryEstimate:
    """Peak device memory and host RAM per stage for `plan` (see the module docstring for the model). One function
    for both families: what differs (encoders, channels, compression, context tokens) comes from `sizes`."""
    e_dit, e_vae = DTYPE_BYTES[plan.precision], DTYPE_BYTES[plan.vae_precision]
    e_llm, e_clip = DTYPE_BYTES[plan.text_precision], DTYPE_BYTES[plan.text_precision_2]
    cpu = plan.device == "cpu"
    prompts = plan.batch * (2 if plan.real_cfg else 1)  # sequences through the text encoders
    streams = plan.batch * (2 if plan.real_cfg and plan.cfg_batched else 1)  # sequences per DiT forward

    # --- text encoders (LLM then the second encoder; both loaded together) ---
    tokens = plan.text_len + sizes.text_template
    # the LLM is built without its last `llm_skip` layers and returns only its last hidden state: a few (L, D) maps
    # and one MLP's intermediate are live at a time, per prompt
    text_act = prompts * (4 * tokens * sizes.llm_hidden * e_llm + 3 * tokens * sizes.llm_intermediate * e_llm)
    built = sizes.llm_layers - min(plan.llm_skip, sizes.llm_layers)  # decoder layers built
    vision = sizes.llm_vision * e_llm  # the LLaVA's vision tower and projector (I2V), in the LLM's dtype
    llm = (sizes.llm - (sizes.llm_layers - built) * sizes.llm_layer) * e_llm + vision
    if plan.offload == "block" and not cpu:
        # the LLM's layers stream (docs/DESIGN.md §23): its embeddings, final norm (and a LLaVA's vision tower) +
        # `window` layers on the device; on the host, the model as read (each layer's copy released once it is
        # pinned), then the pinned layers
        outside = (sizes.llm - sizes.llm_layers * sizes.llm_layer) * e_llm + vision
        resident = outside + min(plan.window, built) * sizes.llm_layer * e_llm
        host = max(llm, outside + llm_pinned(plan, sizes))
        text = Stage("text encoders", resident + sizes.clip * e_clip, text_act, host=host)
    else:
        text = Stage("text encoders", llm + sizes.clip * e_clip, text_act, host=llm)

    # --- image encoders (I2V with an image encoder: SigLIP, then the VAE encodes the first frame) ---
    image = None
    H, W, frames = plan.height, plan.width, plan.frames
    if plan.task == "i2v" and sizes.vision:
        e_vis = DTYPE_BYTES[plan.vision_precision]
        vis_act = 4 * sizes.vision_tokens * sizes.vision_hidden + 3 * sizes.vision_tokens * sizes.vision_intermediate
        th, tw = (min(H, plan.tile_size), min(W, plan.tile_size)) if plan.vae_tiling else (H, W)
        enc_act = VAE_ACT_UNTILED * th * tw * sizes.vae_c0 * e_vae + KERNEL_WORKSPACE + 3 * H * W * 4  # one frame
        weights = sizes.vision * e_vis + sizes.vae * e_vae
        image = Stage("image encoders", weights, max(vis_act * e_vis, enc_act), host=weights)

    # --- DiT ---
    wbytes = 1 if plan.use_fp8 else e_dit
    blk_lin, blk_other = sizes.dit_largest_block
    if plan.offload == "block":
        dit_weights = sizes.dit_other * e_dit + plan.window * (blk_lin * wbytes + blk_other * e_dit)
    elif plan.shards > 1:  # each process holds 1/shards of every block and gathers one block at a time
        blocks = (sizes.dit_block_other + sizes.dit_block_linear) * e_dit
        dit_weights = sizes.dit_other * e_dit + blocks // plan.shards + (blk_lin + blk_other) * e_dit
    else:
        dit_weights = sizes.dit_other * e_dit + sizes.dit_block_other * e_dit + sizes.dit_block_linear * wbytes
    stored = sizes.dit_other * e_dit + sizes.dit_block_other * e_dit + sizes.dit_block_linear * wbytes
    pt, ph, pw = sizes.dit_patch
    lat_t = (frames - 1) // sizes.vae_temporal + 1
    lat_h, lat_w = H // sizes.vae_spatial, W // sizes.vae_spatial
    img_tokens = (lat_t // pt) * (lat_h // ph) * (lat_w // pw)
    seq = math.ceil((img_tokens + plan.text_len + sizes.context_extra) / plan.parallel)
    act = streams * seq * (DIT_ACT_C * sizes.dit_hidden + DIT_ACT_M * sizes.dit_mlp) * e_dit
    act += img_tokens * (sizes.dit_hidden // 2) * 4  # RoPE table (Li, C/2 complex64 over heads' dims) upper bound
    latent = lat_t * lat_h * lat_w
    act += plan.batch * 4 * sizes.dit_out_channels * latent * 4  # latents, noise, velocity, update in fp32
    if sizes.dit_cond_channels:  # the condition (fp32), and the concatenated input of every stream
        act += plan.batch * sizes.dit_cond_channels * latent * 4
        act += streams * (sizes.dit_out_channels + sizes.dit_cond_channels) * latent * 4
    if plan.use_fp8:
        act += 2 * sizes.dit_largest_linear * e_dit  # one layer's upcast weight (cast, then scaled)
    # Host while loading: the mmap'd file's pages are touched. A dtype change goes one tensor at a time and returns
    # each source's pages (load_dit), as fp8 quantizing while loading does (quantize_dit(drop_pages=True)), so
    # neither holds a second copy of the model.
    streamed = plan.offload == "block" and not plan.use_fp8  # block host copies = the mapped file, file dtype
    if cpu and streamed:
        # blocks stream from the mapping: `window` blocks are resident in the compute dtype (the file's pages, or
        # a cast copy whose source pages were returned); evicted blocks' pages are returned (offload.BlockStreamer)
        dit = Stage("DiT denoise", (sizes.dit_other + plan.window * (blk_lin + blk_other)) * e_dit, act)
    elif cpu:
        dit = Stage("DiT denoise", stored, act)
    else:  # pinned host copies in the compute dtype, in slabs; block offload returns each mapped page once copied
        pinned = dit_pinned(plan, sizes)
        host_load = stored if plan.use_fp8 else sizes.dit_file_bytes
        dit = Stage("DiT denoise", dit_weights, act, host=pinned if streamed else host_load + pinned)

    # --- VAE decode ---
    th, tw = (min(H, plan.tile_size), min(W, plan.tile_size)) if plan.vae_tiling else (H, W)
    if plan.vae_tiling and frames > plan.chunk_frames:  # temporal chunks; shorter clips decode in one piece
        maps = VAE_ACT_CHUNKED * th * tw * plan.chunk_frames
    else:
        maps = VAE_ACT_UNTILED * th * tw * frames
    vae_act = maps * sizes.vae_c0 * e_vae + KERNEL_WORKSPACE
    # decoded videos, then their float32 copies
    vae_act += plan.batch * 3 * frames * H * W * (e_vae + (4 if e_vae != 4 else 0))
    vae = Stage("VAE decode", sizes.vae * e_vae, vae_act, host=sizes.vae * e_vae)

    notes = []
    if plan.offload == "model" and not cpu:
        notes.append("model offload keeps a pinned host copy of the DiT")
    stages = (text, dit, vae) if image is None else (text, image, dit, vae)
    return MemoryEstimate(plan, stages, baseline, tuple(notes))


# ---------------------------------------------------------------------------------------------------------------
# Reading the configs under --model-base, and the preflight check
# ---------------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def model_sizes(dit_cfg: DiTConfig, paths: ModelPaths) -> ModelSizes:
    """Parameter counts of every component from the configs under the located model paths."""

    llm_cfg = _read_json(Path(paths.text_encoder) / "config.json")
    clip_cfg = _read_json(Path(paths.text_encoder_2) / "config.json")
    vae_json = _read_json(Path(paths.vae) / "config.json")
    vae_cfg = VAEConfig.from_config_dict(vae_json) if vae_json else VAEConfig()
    dit_path = Path(paths.dit)
    files = [dit_path] if dit_path.is_file() else [*dit_path.glob("*.safetensors"), *dit_path.glob("*.pt")]
    return ModelSizes(
        **dit_sizes(dit_cfg),
        **llm_sizes(llm_cfg),
        clip=clip_text_params(clip_cfg) if clip_cfg else 0,
        vae=vae_params(vae_cfg),
        vae_c0=vae_cfg.block_out_channels[0],
        dit_file_bytes=sum(f.stat().st_size for f in files if f.is_file()),
    )


def current_rss() -> int:
    """Resident set size of this process now (bytes); 0 where /proc is unavailable."""
    return proc_kb("VmRSS") * 1024


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (bytes); falls back to total physical memory."""
    return proc_kb("MemAvailable", "/proc/meminfo") * 1024 or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_capacity(device: str | torch.device) -> int:
    """Bytes the run may use on `device`: on CUDA the memory free on that card now (`torch.cuda.mem_get_info`: a
    display or another process holds the rest) plus what this process's caching allocator already reserved; on the
    CPU the RAM available now plus what this process already holds."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev)
    return host_capacity()


def host_capacity(processes: int = 1) -> int:
    """Host RAM the run's processes on this machine may use: available now plus what they already hold (each
    about this process's RSS)."""
    return available_ram() + processes * current_rss()


def local_processes() -> int:
    """Processes of this run on this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def suggestion(plan: MemoryPlan) -> str:
    """The cheapest changes that lower the peak, in the order worth trying."""
    tips = []
    if not plan.use_fp8:
        tips.append("--use-fp8")
    if plan.offload != "block":
        tips.append("--offload block")
    if not plan.vae_tiling:
        tips.append("--vae-tiling")
    elif plan.tile_size > 128:
        tips.append("--vae-tile-size 128")
    tips.append("a smaller --video-size / --video-length")
    return "try " + ", ".join(tips)


def check_fits(est: MemoryEstimate, capacity: int, host: int | None = None) -> str | None:
    """None when the estimate fits `capacity` bytes of the device (and, off the CPU, `host` bytes of RAM for all
    the run's processes on this machine, when given); otherwise a one-line reason with a suggestion."""
    need = est.device_peak
    if need > capacity:
        where = "RAM" if est.plan.device == "cpu" else est.plan.device
        return (
            f"not enough memory: this request needs ~{need / GiB:.1f} GiB of {where}, {capacity / GiB:.1f} GiB "
            f"available; {suggestion(est.plan)} (or --no-memory-check to run anyway)"
        )
    if host is not None and est.plan.device != "cpu" and est.host_total > host:
        procs = f" ({est.plan.processes} processes)" if est.plan.processes > 1 else ""
        tip = "--use-fp8, " if not est.plan.use_fp8 else ""
        return (
            f"not enough host RAM: this request needs ~{est.host_total / GiB:.1f} GiB{procs}, {host / GiB:.1f} GiB "
            f"available; try {tip}less offloading (--offload none keeps no host copy) or fewer processes per machine "
            f"(or --no-memory-check to run anyway)"
        )
    return None


def preflight(
    req: object,
    paths: ModelPaths | None,
    dit_cfg: DiTConfig | None,
    device: str | torch.device | None = None,
    *,
    plan: MemoryPlan | None = None,
    sizes: ModelSizes | None = None,
) -> MemoryEstimate:
    """Estimate the request's peak memory from the configs, log it, and raise `UsageError` (exit 2, one line with a
    suggestion) when it cannot fit and `req.memory_check` is on. `device` is the run's device (default
    `req.device`; under torchrun call this after `torch.cuda.set_device`, so a bare "cuda" means this rank's card):
    its free memory is the limit; on CUDA the host RAM of all this machine's processes is checked too.
    `plan` / `sizes` replace what `req` and `paths` / `dit_cfg` give (a HunyuanVideo 1.5 request: `plan15`,
    `model_sizes15`). Reads no weights."""
    plan = replace(plan if plan is not None else plan_from_request(req), processes=local_processes())
    sizes = sizes if sizes is not None else model_sizes(dit_cfg, paths)
    est = estimate(plan, sizes, baseline=current_rss())
    for line in est.lines():
        logger.info(line)
    problem = check_fits(
        est, device_capacity(device if device is not None else req.device), host_capacity(plan.processes)
    )
    if problem is not None and getattr(req, "memory_check", True):
        raise UsageError(None, problem)
    if problem is not None:
        logger.warning(f"{problem}; continuing because of --no-memory-check")
    return est


# ---------------------------------------------------------------------------------------------------------------
# Planning without running: the per-stage plan and the cheapest flag set that fits (--dry-run, --gpu-memory)
# ---------------------------------------------------------------------------------------------------------------
CUDA_CONTEXT = 512 * 2**20  # CUDA context + library workspaces on a card planned for but not measured (bytes)
TILE_SIZES = (256, 192, 128)  # VAE tile edges tried, largest (fewest seams, fastest) first
# What to add, cheapest first: each step costs more speed or accuracy than the one before. fp8 weights: ~3% output
# error, same speed; model offload: a host copy and one transfer per stage (this pipeline already frees each
# component after its stage, so it lowers no device peak here); block offload: every block crosses PCIe every
# step. Within each step, the largest VAE tile that fits (smaller tiles: more seams to blend, slower decode).
SEARCH_ORDER: tuple[tuple[bool, str], ...] = (
    (False, "none"),
    (True, "none"),
    (False, "model"),
    (False, "block"),
    (True, "block"),
)
OFFLOAD_RANK = {"none": 0, "model": 1, "block": 2}


def card_capacity(gb: float) -> int:
    """Usable bytes of a card of `gb` GB (as printed on it: 2^30 bytes), less the CUDA context."""
    return int(gb * GiB) - CUDA_CONTEXT


def candidates(plan: MemoryPlan) -> list[MemoryPlan]:
    """Flag sets to try for `plan`, cheapest first (`SEARCH_ORDER` x `TILE_SIZES`); never removes a choice the
    request already made (fp8 stays on, offload never drops to a lower level, tiles never grow)."""
    tiles = [(plan.vae_tiling, plan.tile_size)]
    tiles += [(True, t) for t in TILE_SIZES if t < plan.tile_size or not plan.vae_tiling]
    out: list[MemoryPlan] = []
    for fp8, offload in SEARCH_ORDER:
        level = max(offload, plan.offload, key=OFFLOAD_RANK.__getitem__)
        for tiling, tile in tiles:
            c = replace(plan, use_fp8=plan.use_fp8 or fp8, offload=level, vae_tiling=tiling, tile_size=tile)
            if c not in out:
                out.append(c)
    return out


def cheapest_fit(
    plan: MemoryPlan, sizes: ModelSizes, capacity: int, host: int | None = None, baseline: int = 0
) -> MemoryPlan | None:
    """The first of `candidates(plan)` whose estimate fits `capacity` device bytes (and `host` RAM), or None."""
    for c in candidates(plan):
        if check_fits(estimate(c, sizes, baseline), capacity, host) is None:
            return c
    return None


def added_flags(plan: MemoryPlan, base: MemoryPlan) -> list[str]:
    """The command-line flags that turn request `base` into `plan`."""
    flags = []
    if plan.use_fp8 and not base.use_fp8:
        flags.append("--use-fp8")
    if plan.offload != base.offload:
        flags += ["--offload", plan.offload]
    if plan.vae_tiling and not base.vae_tiling:
        flags.append("--vae-tiling")
    if plan.vae_tiling and plan.tile_size != base.tile_size:
        flags += ["--vae-tile-size", str(plan.tile_size)]
    return flags


def dry_run_lines(
    plan: MemoryPlan,
    sizes: ModelSizes | None = None,
    capacity: int | None = None,
    host: int | None = None,
    baseline: int = 0,
) -> list[str]:
    """What `--dry-run` prints: the request's memory plan per stage (device and host), the capacity it is checked
    against, and the cheapest flag set that fits. `sizes` default: the released model (`full_size_sizes`, for
    planning before the download); `capacity` default: the free memory of `plan.device` (`--gpu-memory GB` gives
    `card_capacity(GB)` instead); `host` (optional): host RAM for all of the run's processes."""
    sizes = full_size_sizes() if sizes is None else sizes
    capacity = device_capacity(plan.device) if capacity is None else capacity
    est = estimate(plan, sizes, baseline)
    lines = est.lines()
    lines.append(
        f"capacity: {plan.device} {capacity / GiB:.1f} GiB"
        + (f", host RAM {host / GiB:.1f} GiB" if host is not None and plan.device != "cpu" else "")
    )
    fit = cheapest_fit(plan, sizes, capacity, host, baseline)
    if fit == plan:
        lines.append("fits as requested")
    elif fit is not None:
        peak = estimate(fit, sizes, baseline)
        lines.append(
            f"cheapest flags that fit: {' '.join(added_flags(fit, plan))} (peak {plan.device} "
            f"{peak.device_peak / GiB:.1f} GiB, host {peak.host_total / GiB:.1f} GiB)"
        )
    else:
        least = min((estimate(c, sizes, baseline) for c in candidates(plan)), key=lambda e: e.device_peak)
        stage = max(least.stages, key=lambda s: s.device)
        tip = {
            "text encoders": "block offload already streams the LLM's layers and nothing else lowers this stage: "
            "it needs a larger card",
            "DiT denoise": "try a smaller --video-size / --video-length, or sequence parallelism over several GPUs "
            "(torchrun --ulysses-degree)",
        }.get(stage.name, "try a smaller --video-size / --video-length")
        flags = " ".join(added_flags(least.plan, plan)) or "as requested"
        lines.append(
            f"no flag set fits: even with {flags} the {stage.name} stage needs {stage.device / GiB:.1f} GiB; {tip}"
        )
    return lines


def planning_sizes(dit_cfg: DiTConfig | None, paths: ModelPaths | None) -> ModelSizes:
    """The sizes to plan with: from the configs under `paths` when the weights are there, else the released
    components' (`full_size_sizes`, with the chosen DiT preset `dit_cfg`), so a dry run works before the download."""
    if paths is None or dit_cfg is None or not Path(paths.dit).exists():
        return full_size_sizes(dit_cfg)
    return model_sizes(dit_cfg, paths)


# ---------------------------------------------------------------------------------------------------------------
# The released model, for on-paper estimates without the weights (docs/BENCHMARKS.md)
# ---------------------------------------------------------------------------------------------------------------
FULL_SIZE_LLM = {  # Llama-3-8B language model of llava-llama-3-8b-v1_1 (its config.json)
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
FULL_SIZE_CLIP = {  # openai/clip-vit-large-patch14 text tower
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "intermediate_size": 3072,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
}


@cache
def full_size_sizes(dit_cfg: DiTConfig | None = None) -> ModelSizes:
    """ModelSizes of the released HYVideo-T/2-cfgdistill (or `dit_cfg`, e.g. another preset) + Llama-3-8B + CLIP-L +
    884-16c-hy VAE, with a bf16 DiT file."""
    dit = dit_sizes(dit_cfg or DiTConfig())
    n_dit = dit["dit_block_linear"] + dit["dit_block_other"] + dit["dit_other"]
    return ModelSizes(
        **dit,
        **llm_sizes(FULL_SIZE_LLM),
        clip=clip_text_params(FULL_SIZE_CLIP),
        vae=vae_params(VAEConfig()),
        vae_c0=VAEConfig().block_out_channels[0],
        dit_file_bytes=2 * n_dit,
    )


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5: the components' sizes from their configs, and the estimate from explicit arguments
# ---------------------------------------------------------------------------------------------------------------
HV15_DIT = {  # the release transformer config.json (official key names), the same for every 1.5 version
    "hidden_size": 2048,
    "heads_num": 16,
    "mlp_width_ratio": 4.0,
    "mm_double_blocks_depth": 54,
    "mm_single_blocks_depth": 0,
    "in_channels": 32,
    "concat_condition": True,  # img_in reads latents + image-latent condition + mask: 2 x 32 + 1 = 65 channels
    "out_channels": 32,
    "patch_size": [1, 1, 1],
    "text_states_dim": 3584,
    "vision_states_dim": 1152,
    "use_meanflow": False,  # True for 480p_i2v_step_distilled (a second timestep embedder, time_r_in)
}
# Fixed in the official code, not in its config.json: byt5_in maps byT5's 1472 wide states -> 2048 -> 2048 -> hidden,
# and the token refiner has 2 blocks (diffusers' config has both: text_embed_2_dim, num_refiner_layers)
BYT5_MAPPER_HIDDEN = 2048
HV15_DIT_FIXED = {"byt5_dim": 1472, "refiner_depth": 2}
FREQ_DIM = 256  # timestep embedders' sinusoid width
FULL_SIZE_QWEN = {  # Qwen2.5-VL-7B-Instruct's language model (its config.json's text_config); no vision tower
    "model_type": "qwen2_5_vl_text",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
}
QWEN_TEMPLATE = 108  # prompt-template tokens the LLM reads before the 1000 kept (cropped after the LLM)
FULL_SIZE_BYT5 = {  # google/byt5-small's encoder (T5EncoderModel)
    "d_model": 1472,
    "d_ff": 3584,
    "d_kv": 64,
    "num_heads": 6,
    "num_layers": 12,
    "relative_attention_num_buckets": 32,
    "feed_forward_proj": "gated-gelu",
    "vocab_size": 384,
}
# Glyph-SDXL-v2 adds one token per colour (assets/color_idx.json: 138) and per font (multilingual_10-lang_idx.json:
# 512 en, 143 cn, 211 jp, 122 kr) to byT5's tokenizer and resizes the embedding to match: 384 + 1126 = 1510 rows.
GLYPH_TOKENS = 138 + 988
BYT5_TOKENS = 256
FULL_SIZE_SIGLIP = {  # FLUX.1-Redux-dev's image_encoder: SigLIP so400m, patch 14 at 384 px -> 27 x 27 = 729 tokens
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "num_channels": 3,
}
HV15_VAE = {  # the release VAE config (diffusers' names; the official config.json says ffactor_spatial/temporal)
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 32,
    "block_out_channels": [128, 256, 512, 1024, 1024],
    "layers_per_block": 2,
    "spatial_compression_ratio": 16,
    "temporal_compression_ratio": 4,
    "downsample_match_channel": True,
    "upsample_match_channel": True,
}


def dit15_tensors(cfg: dict) -> tuple[tuple[tuple[tuple[int, bool], ...], ...], tuple[int, ...]]:
    """The 1.5 DiT's tensors from its config.json, counted from the layer shapes (no model built): per double block
    every tensor as (numel, fp8-able: a block Linear weight), in the official key order (img_mod, img_attn_q/k/v,
    q/k RMS norms, img_attn_proj, img_mlp fc1/fc2, then the same for txt_), and the numel of every tensor outside the
    blocks (img_in, vision_in, byt5_in, txt_in refiner, time_in [+ time_r_in], cond_type_embedding, final_layer)."""
    cfg = dit15_config(cfg)
    if int(cfg.get("mm_single_blocks_depth", 0)):
        raise ValueError("a HunyuanVideo 1.5 DiT has no single-stream blocks")
    C, heads = int(cfg["hidden_size"]), int(cfg["heads_num"])
    M, d = int(C * float(cfg.get("mlp_width_ratio", 4.0))), C // heads
    pt, ph, pw = cfg.get("patch_size", [1, 1, 1])
    c_in = int(cfg["in_channels"]) * (2 if cfg.get("concat_condition") else 1) + int(bool(cfg.get("concat_condition")))
    out, T, V = int(cfg["out_channels"]), int(cfg["text_states_dim"]), int(cfg["vision_states_dim"])
    B, H2 = int(cfg["byt5_dim"]), BYT5_MAPPER_HIDDEN

    def lin(i: int, o: int) -> list[tuple[int, bool]]:  # weight (a Linear's: fp8-able inside a block), bias
        return [(i * o, True), (o, False)]

    stream = [*lin(C, 6 * C), *lin(C, C), *lin(C, C), *lin(C, C), (d, False), (d, False), *lin(C, C)]
    stream += [*lin(C, M), *lin(M, C)]
    block = tuple(stream + stream)  # img_*, then txt_*
    blocks = (block,) * int(cfg["mm_double_blocks_depth"])

    def numels(layers: list[tuple[int, bool]]) -> list[int]:
        return [n for n, _ in layers]

    def timestep() -> list[int]:  # TimestepEmbedder: 256 -> C -> C
        return numels([*lin(FREQ_DIM, C), *lin(C, C)])

    refiner_block = [C, C, *numels(lin(C, 3 * C)), *numels(lin(C, C)), C, C]  # norm1, qkv, proj, norm2
    refiner_block += [*numels(lin(C, M)), *numels(lin(M, C)), *numels(lin(C, 2 * C))]  # mlp, adaLN
    other = [c_in * pt * ph * pw * C, C]  # img_in (Conv3d)
    other += [V, V, *numels(lin(V, V)), *numels(lin(V, C)), C, C]  # vision_in: LN, Linear, GELU, Linear, LN
    other += [B, B, *numels(lin(B, H2)), *numels(lin(H2, H2)), *numels(lin(H2, C))]  # byt5_in
    other += [*numels(lin(T, C)), *timestep(), *numels(lin(T, C)), *numels(lin(C, C))]  # txt_in embedders
    other += refiner_block * int(cfg["refiner_depth"])
    other += timestep() * (2 if cfg.get("use_meanflow") else 1)  # time_in [, time_r_in]
    other += [3 * C]  # cond_type_embedding (Qwen, byT5, vision)
    other += [*numels(lin(C, out * pt * ph * pw)), *numels(lin(C, 2 * C))]  # final_layer: linear, adaLN
    return blocks, tuple(other)


def dit15_config(cfg: dict) -> dict:
    """A 1.5 transformer config.json in the official names, whichever layout wrote it (diffusers: num_layers,
    num_attention_heads x attention_head_dim, in_channels 65 with the condition, text_embed_2_dim, ...), with the
    numbers the official code fixes (`HV15_DIT_FIXED`) unless the config gives them."""
    if "num_attention_heads" not in cfg:  # official names already
        return {**HV15_DIT_FIXED, **cfg}
    heads, in_ch = int(cfg["num_attention_heads"]), int(cfg["in_channels"])
    p, pt = int(cfg.get("patch_size", 1)), int(cfg.get("patch_size_t", 1))
    return {
        "hidden_size": heads * int(cfg["attention_head_dim"]),
        "heads_num": heads,
        "mlp_width_ratio": float(cfg.get("mlp_ratio", 4.0)),
        "mm_double_blocks_depth": int(cfg["num_layers"]),
        "mm_single_blocks_depth": 0,
        "in_channels": (in_ch - 1) // 2,  # 2 x latent channels + the mask
        "concat_condition": True,
        "out_channels": int(cfg["out_channels"]),
        "patch_size": [pt, p, p],
        "text_states_dim": int(cfg["text_embed_dim"]),
        "vision_states_dim": int(cfg["image_embed_dim"]),
        "use_meanflow": bool(cfg.get("use_meanflow", False)),
        "byt5_dim": int(cfg.get("text_embed_2_dim", HV15_DIT_FIXED["byt5_dim"])),
        "refiner_depth": int(cfg.get("num_refiner_layers", HV15_DIT_FIXED["refiner_depth"])),
    }


def dit15_fields(cfg: dict) -> dict[str, object]:
    """The DiT fields of `ModelSizes` for a 1.5 transformer config.json (either layout's names)."""
    cfg = dit15_config(cfg)
    blocks, other = dit15_tensors(cfg)
    C = int(cfg["hidden_size"])
    return dit_fields(blocks, other, C, int(C * float(cfg.get("mlp_width_ratio", 4.0))), tuple(cfg["patch_size"]))


def t5_encoder_params(cfg: dict) -> int:
    """Parameters of a T5 encoder (T5EncoderModel: embedding, blocks without biases, relative position buckets in the
    first block, final norm) from its config.json."""
    d, ff, layers = int(cfg["d_model"]), int(cfg["d_ff"]), int(cfg["num_layers"])
    heads, inner = int(cfg["num_heads"]), int(cfg["num_heads"]) * int(cfg["d_kv"])
    ffn = (3 if str(cfg.get("feed_forward_proj", "relu")).startswith("gated") else 2) * d * ff
    per_layer = 4 * d * inner + d + ffn + d  # q, k, v, o; norm; (gated) MLP; norm
    return int(cfg["vocab_size"]) * d + layers * per_layer + int(cfg["relative_attention_num_buckets"]) * heads + d


def siglip_vision_params(cfg: dict) -> int:
    """Parameters of SigLIP's vision tower (SiglipVisionModel, with its attention-pooling head unless the config
    turns it off) from its config.json (a full SiglipModel config keeps it in vision_config)."""
    cfg = cfg.get("vision_config") or cfg
    h, i, n = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    p, c = int(cfg["patch_size"]), int(cfg.get("num_channels", 3))
    tokens = (int(cfg["image_size"]) // p) ** 2
    mlp = h * i + i + i * h + h
    layer = 4 * h + 4 * (h * h + h) + mlp  # two LayerNorms, q/k/v/out, MLP
    head = h + 3 * h * h + 3 * h + h * h + h + 2 * h + mlp if cfg.get("vision_use_head", True) else 0
    return c * p * p * h + h + tokens * h + n * layer + 2 * h + head


def vae15_config(cfg: dict) -> dict:
    """A 1.5 VAE config.json in diffusers' names (the official one says ffactor_spatial / ffactor_temporal)."""
    out = {**HV15_VAE, **{k: v for k, v in cfg.items() if k in HV15_VAE}}
    if "ffactor_spatial" in cfg:
        out["spatial_compression_ratio"] = int(cfg["ffactor_spatial"])
    if "ffactor_temporal" in cfg:
        out["temporal_compression_ratio"] = int(cfg["ffactor_temporal"])
    return out


def vae15_params(cfg: dict) -> int:
    """Parameters of the 1.5 VAE (causal 3D convs, RMS norms, pixel-shuffle resampling, one attention per mid
    block) counted from its config's numbers."""
    cfg = vae15_config(cfg)
    ch, per = list(cfg["block_out_channels"]), int(cfg["layers_per_block"])
    z, s = int(cfg["latent_channels"]), int(math.log2(cfg["spatial_compression_ratio"]))
    t = int(math.log2(cfg["temporal_compression_ratio"]))

    def conv(i: int, o: int) -> int:  # 3x3x3 with bias
        return 27 * i * o + o

    def resnet(i: int, o: int) -> int:  # norm1, conv1, norm2, conv2 [, 1x1x1 shortcut]
        return i + conv(i, o) + o + conv(o, o) + (i * o + o if i != o else 0)

    def mid(c: int) -> int:  # resnet, attention (norm, q, k, v, out as 1x1x1 convs), resnet
        return 2 * resnet(c, c) + c + 4 * (c * c + c)

    enc, cin = conv(int(cfg["in_channels"]), ch[0]), ch[0]
    for i, c in enumerate(ch):
        enc += resnet(cin, c) + (per - 1) * resnet(c, c)
        cin = c
        if i < s:  # space-to-channel downsampling, in time too for the last levels
            cin = ch[i + 1] if cfg["downsample_match_channel"] else c
            enc += conv(c, cin // (8 if i >= s - t else 4))
    enc += mid(ch[-1]) + ch[-1] + conv(ch[-1], 2 * z)
    up = ch[::-1]
    dec, cin = conv(z, up[0]) + mid(up[0]), up[0]
    for i, c in enumerate(up):
        dec += resnet(cin, c) + per * resnet(c, c)
        cin = c
        if i < s or i < t:  # channel-to-space upsampling, in time too for the first levels
            cin = up[i + 1] if cfg["upsample_match_channel"] else c
            dec += conv(c, cin * (8 if i < t else 4))
    dec += up[-1] + conv(up[-1], int(cfg["out_channels"]))
    return enc + dec


def sizes15(
    dit_cfg: dict,
    llm_cfg: dict,
    byt5_cfg: dict,
    vae_cfg: dict,
    vision_cfg: dict | None,
    dit_file_bytes: int = 0,
    dit: dict[str, object] | None = None,
) -> ModelSizes:
    """`ModelSizes` of a 1.5 model from its components' config.json files (`byt5_cfg` with the glyph tokens already
    in its vocab_size; `vision_cfg` None without an image encoder). `dit`: the DiT fields when the caller has them
    from the built model (`dit_sizes`), else counted from `dit_cfg`."""
    dit_cfg = dit15_config(dit_cfg)
    dit = dit15_fields(dit_cfg) if dit is None else dit
    vae = vae15_config(vae_cfg)
    vision = (vision_cfg or {}).get("vision_config") or vision_cfg or {}
    tokens = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2 if vision else 0
    n_dit = sum(int(x) for x in (dit["dit_block_linear"], dit["dit_block_other"], dit["dit_other"]))
    return ModelSizes(
        **dit,
        **llm_sizes(llm_cfg),
        clip=t5_encoder_params(byt5_cfg),
        vae=vae15_params(vae),
        vae_c0=int(vae["block_out_channels"][0]),
        dit_file_bytes=dit_file_bytes or 2 * n_dit,
        dit_out_channels=int(dit_cfg["out_channels"]),
        dit_cond_channels=int(dit_cfg["in_channels"]) + 1 if dit_cfg.get("concat_condition") else 0,
        context_extra=BYT5_TOKENS + (tokens or 729),  # SigLIP's tokens are in the context for T2V too (zeros)
        text_template=QWEN_TEMPLATE,
        vae_spatial=int(vae["spatial_compression_ratio"]),
        vae_temporal=int(vae["temporal_compression_ratio"]),
        vision=siglip_vision_params(vision) if vision else 0,
        vision_tokens=tokens,
        vision_hidden=int(vision.get("hidden_size", 0)),
        vision_intermediate=int(vision.get("intermediate_size", 0)),
    )


def glyph_tokens(glyph: Path | None) -> int:
    """Tokens Glyph-SDXL-v2 adds to byT5's vocabulary: one per colour and per font in its assets (the release's
    1126 when the folder has no assets); 0 without a glyph folder."""
    if glyph is None:
        return 0
    colours = _read_json(Path(glyph) / "assets" / "color_idx.json")
    fonts = _read_json(Path(glyph) / "assets" / "multilingual_10-lang_idx.json")
    return len(colours) + len(fonts) if colours and fonts else GLYPH_TOKENS


def model_sizes15(
    dit: Path,
    vae: Path,
    llm: Path,
    byt5: Path,
    glyph: Path | None = None,
    vision: Path | None = None,
    dit_fields: dict[str, object] | None = None,
) -> ModelSizes:
    """Parameter counts of a 1.5 model from the config.json files of its folders (an official `ckpts/` tree or a
    diffusers pipeline folder: the fields of `locate15`'s paths), no weights read. `glyph`: the official
    Glyph-SDXL-v2 folder, whose tokens grow byT5's embedding as it loads (a diffusers text_encoder_2 config already
    counts them); `vision`: SigLIP's folder (I2V), else None; `dit_fields`: as `sizes15`'s `dit`."""
    dit_path = Path(dit)
    files = [dit_path] if dit_path.is_file() else [*dit_path.glob("*.safetensors")]
    dit_cfg = _read_json((dit_path.parent if dit_path.is_file() else dit_path) / "config.json")
    byt5_cfg = _read_json(Path(byt5) / "config.json")
    byt5_cfg = {**byt5_cfg, "vocab_size": int(byt5_cfg["vocab_size"]) + glyph_tokens(glyph)}
    vision_cfg = _read_json(Path(vision) / "config.json") if vision is not None else None
    return sizes15(
        dit_cfg,
        _read_json(Path(llm) / "config.json"),
        byt5_cfg,
        _read_json(Path(vae) / "config.json"),
        vision_cfg or None,
        dit_file_bytes=sum(f.stat().st_size for f in files if f.is_file()),
        dit=dit_fields,
    )


@cache
def full_size_sizes15(meanflow: bool = False) -> ModelSizes:
    """ModelSizes of the released HunyuanVideo 1.5 (8.3B DiT, `meanflow`: the step-distilled one) + Qwen2.5-VL-7B's
    language model + byT5-small with the glyph tokens + SigLIP so400m + the 32-channel VAE, with a bf16 DiT file."""
    byt5 = {**FULL_SIZE_BYT5, "vocab_size": FULL_SIZE_BYT5["vocab_size"] + GLYPH_TOKENS}
    return sizes15({**HV15_DIT, "use_meanflow": meanflow}, FULL_SIZE_QWEN, byt5, HV15_VAE, FULL_SIZE_SIGLIP)


def hv15_version(version: str) -> tuple[str, str, bool, bool]:
    """(resolution, task, cfg-distilled: guidance 1, no real CFG, meanflow) of a 1.5 version name."""
    spec = HV15_VERSIONS.get(version)
    if spec is None or spec.sparse:  # sparse-attention versions are refused, so never planned
        raise ValueError(
            f"unknown HunyuanVideo 1.5 version {version!r}: one of {{480p,720p}}_{{t2v,i2v}}[_distilled] or "
            "480p_i2v_step_distilled"
        )
    return spec.resolution, spec.task, spec.cfg_scale <= 1, spec.step_distilled


def plan15(
    height: int,
    width: int,
    frames: int = 121,
    *,
    version: str = "480p_t2v",
    batch: int = 1,
    precision: str = "bf16",
    offload: str = "none",
    use_fp8: bool = False,
    vae_tiling: bool = True,
    tile_size: int = 256,
    real_cfg: bool | None = None,
    cfg_batched: bool = True,
    device: str = "cuda",
    llm_skip: int = 2,
    parallel: int = 1,
) -> MemoryPlan:
    """The `MemoryPlan` of a 1.5 request: the official dtypes (Qwen fp16, byT5 fp32, SigLIP fp16, VAE fp16),
    1000 Qwen tokens, the task from `version`, real CFG unless the version is distilled (`real_cfg` overrides it:
    False for guidance 1); `cfg_batched` runs both CFG branches in one forward; `llm_skip` the Qwen layers after
    hidden_states[-3] that are never built (0 if the encoder builds all 28)."""
    _res, task, distilled, _meanflow = hv15_version(version)
    return MemoryPlan(
        height,
        width,
        frames,
        device=device,
        precision=precision,
        vae_precision="fp16",
        text_precision="fp16",
        text_precision_2="fp32",
        text_len=1000,
        llm_skip=llm_skip,
        use_fp8=use_fp8,
        offload=offload,
        vae_tiling=vae_tiling,
        tile_size=tile_size,
        parallel=parallel,
        task=task,
        batch=batch,
        real_cfg=not distilled if real_cfg is None else real_cfg,
        cfg_batched=cfg_batched,
        vision_precision="fp16",
    )


def estimate15(
    height: int,
    width: int,
    frames: int = 121,
    *,
    version: str = "480p_t2v",
    batch: int = 1,
    precision: str = "bf16",
    offload: str = "none",
    use_fp8: bool = False,
    vae_tiling: bool = True,
    tile_size: int = 256,
    real_cfg: bool | None = None,
    cfg_batched: bool = True,
    device: str = "cuda",
    llm_skip: int = 2,
    parallel: int = 1,
    sizes: ModelSizes | None = None,
    baseline: int = 0,
) -> MemoryEstimate:
    """Per-stage peak estimate of a HunyuanVideo 1.5 request (`plan15` for the arguments); `sizes` default: the
    released components' (`full_size_sizes15`, with time_r_in for the step-distilled version)."""
    plan = plan15(
        height, width, frames, version=version, batch=batch, precision=precision, offload=offload, use_fp8=use_fp8,
        vae_tiling=vae_tiling, tile_size=tile_size, real_cfg=real_cfg, cfg_batched=cfg_batched, device=device,
        llm_skip=llm_skip, parallel=parallel,
    )  # fmt: skip
    return estimate(plan, full_size_sizes15(hv15_version(version)[3]) if sizes is None else sizes, baseline)
