"""HunyuanVideo 1.5: what its sampling adds to the v1 building blocks (docs/DESIGN.md §22).

One video, B = 1 (2 with batched real CFG):
    frame  = cover_frame(image, H, W)                                the I2V image at the video size (PIL)
    vision = VisionEncoder15.encode(frame)                           (1, 729, 1152)      I2V only; T2V: None
    image  = vae.encode(to_pixels(frame)).mode() * scaling_factor    (1, 32, 1, H/16, W/16)
    cond   = image_condition(image, T, mask=True) | no_image_condition(x)   (1, 33, T, H/16, W/16)
    fn     = concat_condition(network, cond)                         the DiT sees cat_C[x, cond]: 65 channels
    x      = sampling.euler(clock.outer(guided(fn)), noise, sigmas)  meanflow: t_r from `clock`
Unlike v1's token_replace, frame 0 is not held: every latent frame is stepped (both references).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from hyvideo.checkpoints.layout import Model15Paths
from hyvideo.checkpoints.vae15 import load_vae15
from hyvideo.config import DiTConfig, dit_config
from hyvideo.dtypes import PRECISIONS
from hyvideo.image import to_pixels
from hyvideo.memory import MemoryPlan, ModelSizes, model_sizes15, plan15, weight_shards
from hyvideo.modules.dit import ExtraInputs, HYVideoDiT
from hyvideo.modules.qwen_encoder import Text15Embeddings, Text15Encoder
from hyvideo.modules.siglip_encoder import VisionEncoder15
from hyvideo.modules.vae15 import HYVideo15VAE
from hyvideo.request import SampleRequest
from hyvideo.sampling import (
    ModelFn,
    StepClock,
    concat_condition,
    image_condition,
    initial_noise,
    latent_shape,
    no_image_condition,
    official_noise,
)

LATENT_CHANNELS = 32  # the 1.5 VAE's
SPATIAL = 16  # its spatial compression
BYT5_DTYPE = torch.float32  # the official code never casts byT5 (a small model)


# ---------------------------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------------------------
def cover_frame(image: Image.Image, height: int, width: int) -> Image.Image:
    """The official 1.5 preparation of the I2V image, for the VAE and SigLIP alike: scaled by the larger of the two
    side ratios (each side rounded), LANCZOS, then the centered height x width window (offsets rounded). An image
    already of that size is kept as is."""
    if image.size == (width, height):
        return image
    w, h = image.size
    scale = max(width / w, height / h)
    rw, rh = round(w * scale), round(h * scale)
    resized = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = round((rw - width) / 2), round((rh - height) / 2)
    return resized.crop((left, top, left + width, top + height))


@torch.no_grad()
def image_latent(vae: HYVideo15VAE, frame: Image.Image) -> torch.Tensor:
    """The posterior mode of the frame times the scaling factor: (1, C, 1, H/16, W/16) float32 (both references)."""
    weight = next(vae.parameters())
    z = vae.encode(to_pixels(frame).to(dtype=weight.dtype, device=weight.device)).mode()
    return (z * vae.config.scaling_factor).float()


# ---------------------------------------------------------------------------------------------------------------
# The model function the sampler steps
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition15:
    """One video's conditioning beyond the text: the image latent and the SigLIP states (both None: T2V)."""

    image: torch.Tensor | None  # (1, C, 1, h, w) float32
    vision: torch.Tensor | None  # (1, 729, D_vision)


TEXT_TO_VIDEO = Condition15(None, None)


def network(
    model: HYVideoDiT,
    vision: torch.Tensor | None,
    clock: StepClock | None,
    forward: Callable[..., torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]:
    """(x (B, 65, T, h, w), t (B,), Text15Embeddings) -> velocity (B, 32, T, h, w): the DiT with the byT5 states
    of the conditioning, the SigLIP states (the same for the prompt and the negative prompt, as the official code
    gives both branches the image) and, for a meanflow DiT, the step's end timestep from `clock`."""
    forward = model if forward is None else forward
    meanflow = model.cfg.meanflow

    def fn(x: torch.Tensor, t: torch.Tensor, emb) -> torch.Tensor:
        B = x.shape[0]
        t_r = clock.next_timestep(B, x.device) if meanflow else None
        v = None if vision is None else vision.to(x.device).expand(B, -1, -1)
        extra = ExtraInputs(emb.byt5_states, emb.byt5_mask, v, t_r)
        return forward(x, t, emb.states, emb.mask, None, None, extra=extra)

    return fn


def conditioned(model_fn: ModelFn, image: torch.Tensor | None, x: torch.Tensor) -> ModelFn:
    """The sampler's model function for start latents x (B, 32, T, h, w): the 33 condition channels appended (I2V:
    the image latent at frame 0 and the mask; T2V: zeros), on x's device."""
    if image is None:
        cond = no_image_condition(x[:1])
    else:
        cond = image_condition(image.to(x.device), x.shape[2], mask=True)
    return concat_condition(model_fn, cond)


# ---------------------------------------------------------------------------------------------------------------
# The stages, for the pipeline
# ---------------------------------------------------------------------------------------------------------------
def paths_of(req: SampleRequest) -> Model15Paths:
    assert req.hv15 is not None and req.hv15.paths is not None, "a 1.5 request names its folders"
    return req.hv15.paths


def denoiser_config(req: SampleRequest) -> DiTConfig:
    """The DiT's configuration from its folder's config.json (either layout); nothing heavy is read."""
    return dit_config(req.dit.model, paths_of(req).dit / "config.json")


def memory_plan(req: SampleRequest) -> MemoryPlan:
    """The memory-relevant choices of a 1.5 request: real CFG runs its two branches one after the other (the
    runner's guidance, or one branch per process half with --cfg-parallel); U x R processes split the tokens and,
    with --shard-weights, the block weights."""
    s, h, par = req.sampling, req.hv15, req.parallel
    plan = plan15(
        s.height,
        s.width,
        s.video_length,
        version=h.version,
        precision=req.dit.precision,
        offload=req.runtime.offload,
        use_fp8=req.dit.use_fp8,
        vae_tiling=req.decode.vae_tiling,
        tile_size=req.decode.vae_tile_size,
        real_cfg=s.cfg_scale > 1,
        cfg_batched=False,
        device=torch.device(req.runtime.device).type,
        parallel=par.ulysses_degree * par.ring_degree,
    )
    return replace(plan, shards=weight_shards(req))


def memory_sizes(req: SampleRequest) -> ModelSizes:
    p = paths_of(req)
    vision = p.vision if req.hv15.task == "i2v" else None
    return model_sizes15(p.dit, p.vae, p.llm, p.byt5, p.glyph, vision)


def load_text(req: SampleRequest, device: torch.device) -> Text15Encoder:
    """Qwen2.5-VL (--text-encoder-precision) and byT5 (float32, as the official code runs it); `free()` after use.
    Under --offload block (--group_offloading) Qwen's decoder layers stream (docs/DESIGN.md §23)."""
    p = paths_of(req)
    dtype = PRECISIONS[req.text.text_encoder_precision]
    stream = req.runtime.offload == "block"
    return Text15Encoder.load(
        p.llm, p.llm_tokenizer, p.byt5, p.byt5_tokenizer, p.glyph, dtype, device, byt5_dtype=BYT5_DTYPE, stream=stream
    )


def encode_with(encoder: Text15Encoder, req: SampleRequest) -> tuple[Text15Embeddings, Text15Embeddings | None]:
    """(prompt, negative prompt or None) on the CPU; the negative prompt's byT5 states are zeros unless --neg-byt5
    (the official behaviour, docs/DESIGN.md §20)."""
    cond = encoder.encode([req.prompt or ""]).to("cpu")
    if req.cfg_scale <= 1:
        return cond, None
    return cond, encoder.encode([req.neg_prompt or ""], glyph=req.hv15.negative_byt5).to("cpu")


def encode_text(req: SampleRequest, device: torch.device) -> tuple[Text15Embeddings, Text15Embeddings | None]:
    """`encode_with` encoders loaded here and freed before returning."""
    encoder = load_text(req, device)
    try:
        return encode_with(encoder, req)
    finally:
        encoder.free()


def load_vision(req: SampleRequest, device: torch.device) -> VisionEncoder15:
    """SigLIP in --text-encoder-precision (the official runs it in the text encoders' dtype); `free()` after use."""
    p = paths_of(req)
    return VisionEncoder15.load(p.vision, p.vision_processor, PRECISIONS[req.text.text_encoder_precision], device)


def encode_image(
    req: SampleRequest,
    device: torch.device,
    vae: HYVideo15VAE | None = None,
    vision: VisionEncoder15 | None = None,
) -> Condition15:
    """The image's latent and SigLIP states (on the CPU), both from the frame prepared at the video size, with
    `vae` / `vision` or ones loaded and freed here; TEXT_TO_VIDEO for text-to-video weights."""
    if req.hv15.task != "i2v":
        return TEXT_TO_VIDEO
    frame = cover_frame(req.i2v_image.image, req.height, req.width)
    own = vision is None
    vision = load_vision(req, device) if own else vision
    try:
        states = vision.encode(frame).cpu()
    finally:
        if own:
            vision.free()
    vae = load_encoder(req, device) if vae is None else vae
    return Condition15(image_latent(vae, frame).cpu(), states)


def load_encoder(req: SampleRequest, device: torch.device) -> HYVideo15VAE:
    """The VAE that encodes the image (untiled: one frame)."""
    return load_vae15(paths_of(req).vae, dtype=PRECISIONS[req.vae_precision], device=device)


def load_decoder(req: SampleRequest, vae_dir, device: torch.device) -> HYVideo15VAE:
    vae = load_vae15(vae_dir, dtype=PRECISIONS[req.vae_precision], device=device)
    if not req.vae_tiling:
        return vae.disable_tiling()
    return vae.enable_tiling(tile_size=req.vae_tile_size, tile_stride=req.vae_tile_stride)


def start_noise(req: SampleRequest, seed: int, device: torch.device) -> torch.Tensor:
    """(1, 32, T, H/16, W/16) float32: ours (a CPU generator in float32), or --noise official: the official
    sampler's draw, on the CPU in the DiT's dtype."""
    shape = latent_shape(1, req.video_length, req.height, req.width, LATENT_CHANNELS, spatial=SPATIAL)
    if req.sampling.noise == "official":
        return official_noise(shape, [seed], "cpu", PRECISIONS[req.dit.precision]).to(device)
    return initial_noise(shape, [seed], device)
