"""The sampling pipeline: encode text -> noise -> sample -> decode -> write. It only orchestrates.

Components load in the order they run and are freed when done (text encoders before the DiT loads, the DiT
before the VAE loads), so host and device memory hold one large component at a time. Which process runs which step
is the runner's business (`hyvideo.parallel.steps`: one process, or one rank of a torchrun job), chosen once in
`run`.
"""

from __future__ import annotations

import gc
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
from loguru import logger
from tqdm import tqdm

from hyvideo import hardware, hv15, i2v, io, sidecar
from hyvideo.checkpoints.dit import load_dit
from hyvideo.checkpoints.layout import ModelPaths, locate, locate15
from hyvideo.checkpoints.vae import load_vae
from hyvideo.checkpoints.vae15 import verify_vae15
from hyvideo.checkpoints.verify import verify_vae
from hyvideo.compile import compile_blocks
from hyvideo.config import DiTConfig, dit_config
from hyvideo.dtypes import PRECISIONS
from hyvideo.errors import CheckpointError, UsageError
from hyvideo.lora import apply_loras
from hyvideo.memory import (
    CUDA_CONTEXT,
    MemoryPlan,
    ModelSizes,
    card_capacity,
    current_rss,
    dry_run_lines,
    full_size_sizes15,
    host_capacity,
    local_processes,
    plan_from_request,
    planning_sizes,
    preflight,
)
from hyvideo.modules.attention import runnable_backend
from hyvideo.modules.dit import HYVideoDiT, riflex_k
from hyvideo.modules.text_encoders import TextEmbeddings, TextEncoderConfig, TextEncoders
from hyvideo.modules.vae import HYVideoVAE
from hyvideo.offload import apply_offload, move_releasing
from hyvideo.parallel import steps as dist_steps
from hyvideo.parallel.group import launched_by_torchrun
from hyvideo.parallel.steps import Local, WeightReader
from hyvideo.quantization import enable_fp8_compute, is_fp8_file, load_dit_fp8, quantize_dit
from hyvideo.request import SampleRequest
from hyvideo.sampling import (
    StepClock,
    euler,
    flow_sigmas,
    initial_noise,
    latent_shape,
    official_noise,
    with_cond,
)
from hyvideo.teacache import TeaCache
from hyvideo.utils.host_memory import proc_kb


# ---------------------------------------------------------------------------------------------------------------
# Stage bookkeeping: time and peak memory per stage, logged as one line each
# ---------------------------------------------------------------------------------------------------------------
def peak_host_mb() -> float:
    """Peak resident set size of this process (VmHWM), MiB; 0 where /proc is unavailable."""
    return proc_kb("VmHWM") / 1024


@dataclass
class Timings:
    seconds: dict[str, float]
    peak_mib: dict[str, float] = field(default_factory=dict)  # stage -> peak device memory (CUDA) or host RSS, MiB

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        mem = f"peak host RSS {peak_host_mb():.0f} MiB"
        self.peak_mib[f"{name} (host RSS)"] = peak_host_mb()
        if device.type == "cuda":
            mem += f", peak {device} {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
            self.peak_mib[f"{name} ({device})"] = torch.cuda.max_memory_allocated(device) / 2**20
        logger.info(f"{name}: {dt:.2f} s ({mem})")


def release_memory() -> None:
    """Return freed memory to the system / CUDA allocator (call after dropping the last reference)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------------------
def text_config(req: SampleRequest, paths: ModelPaths) -> TextEncoderConfig:
    text = req.text
    return TextEncoderConfig(
        llm_path=paths.text_encoder,
        clip_path=paths.text_encoder_2,
        llm_tokenizer_path=paths.tokenizer,
        clip_tokenizer_path=paths.tokenizer_2,
        text_len=text.text_len,
        text_len_2=text.text_len_2,
        hidden_state_skip_layer=text.hidden_state_skip_layer,
        apply_final_norm=text.apply_final_norm,
        precision=text.text_encoder_precision,
        precision_2=text.text_encoder_precision_2,
        prompt_template=text.prompt_template,
        prompt_template_video=text.prompt_template_video,
        stream=req.offload == "block",  # the LLM's layers stream as the DiT's blocks do (docs/DESIGN.md §23)
    )


def encode_text(
    req: SampleRequest, paths: ModelPaths, device: torch.device
) -> tuple[TextEmbeddings, TextEmbeddings | None]:
    """(prompt embeddings, negative-prompt embeddings or None); the encoders are freed before returning."""
    if req.hv15 is not None:
        return hv15.encode_text(req, device)  # Qwen2.5-VL + byT5
    if req.i2v_mode and i2v.uses_llava(req):
        return i2v.encode_prompts(req, paths, device)  # the prompt with the image, through the LLaVA
    encoders = TextEncoders(text_config(req, paths), device)
    try:
        cond = encoders.encode([req.prompt], req.video_length)
        uncond = encoders.encode([req.neg_prompt], req.video_length) if req.cfg_scale > 1 else None
    finally:
        encoders.free()
    return cond, uncond


def denoiser_config(req: SampleRequest, paths: ModelPaths) -> DiTConfig:
    """The preset overridden by a config.json beside the DiT weights (cheap: no weights are read)."""
    folder = paths.dit if paths.dit.is_dir() else paths.dit.parent
    return dit_config(req.model, folder / "config.json").replace(rope_theta=float(req.rope_theta))


def load_denoiser(
    req: SampleRequest,
    paths: ModelPaths,
    device: torch.device,
    cfg: DiTConfig | None = None,
    reader: WeightReader | None = None,
) -> HYVideoDiT:
    """The DiT ready to run: weights read (LoRAs merged, fp8 stored, offloaded as asked), compiled as asked.
    `cfg`: `denoiser_config` when already computed; `reader`: reads a share of the block weights (a runner's)."""
    cfg = denoiser_config(req, paths) if cfg is None else cfg
    if cfg.out_channels != latent_channels(req):
        raise UsageError(
            "--latent-channels", f"the DiT makes {cfg.out_channels} latent channels, not {latent_channels(req)}"
        )
    dtype = PRECISIONS[req.precision]
    home = device if req.offload == "none" else torch.device("cpu")  # offloaded weights stay in host memory
    if is_fp8_file(paths.dit) and (req.loras or not req.use_fp8):
        what = "merge --lora into the bf16 weights instead" if req.loras else "add --use-fp8"
        raise UsageError("--dit-weight", f"{paths.dit.name} holds fp8 weights (with a scale map); {what}")
    if req.loras:  # merged into the checkpoint's float weights on the CPU, before any cast or quantization
        model = load_dit(paths.dit, cfg, load_key=req.load_key)
        apply_loras(model, req.loras, merge=req.lora_merge)
        if req.use_fp8:
            quantize_dit(model)  # after the merge, so the fp8 weights hold the merged values
        move_releasing(model, home, dtype)  # per tensor, returning unmodified mapped pages as it goes
    elif reader is not None:
        model = reader(paths.dit, cfg, dtype)  # torchrun: this process holds 1/N of the block weights
    elif req.use_fp8:
        model = load_dit_fp8(paths.dit, cfg, load_key=req.load_key, dtype=dtype, device=home)
    else:  # streamed blocks stay in the file's dtype on the host and are cast per block as they load
        keep = req.offload == "block"
        model = load_dit(paths.dit, cfg, load_key=req.load_key, dtype=None if keep else dtype, device=home)
    model = apply_offload(model, req.offload, device, dtype=dtype)
    if req.fp8_compute:
        enable_fp8_compute(model)
    model.attn_backend = runnable_backend(req.attn_backend, device)
    return compile_blocks(model, mode=req.compile_mode) if req.compile else model


def dit_fn(model: HYVideoDiT, embedded_cfg_scale: float, forward: Callable[..., torch.Tensor] | None = None):
    """(x, t, TextEmbeddings) -> velocity, with the embedded guidance (x1000, in the DiT's dtype) when it has one.

    `forward` (default: the model itself) takes the model's arguments; a wrapper such as `TeaCache` goes there."""
    dtype = model.img_in.proj.weight.dtype
    forward = model if forward is None else forward

    def fn(x: torch.Tensor, t: torch.Tensor, emb: TextEmbeddings) -> torch.Tensor:
        g = None
        if model.guidance_in is not None:
            g = (torch.full((x.shape[0],), embedded_cfg_scale, dtype=dtype, device=x.device) * 1000.0).to(dtype)
        return forward(x, t, emb.llm_states, emb.llm_mask, emb.clip_pooled, g)

    return fn


def denoise(
    model: HYVideoDiT,
    cond: TextEmbeddings | hv15.Text15Embeddings,
    uncond: TextEmbeddings | hv15.Text15Embeddings | None,
    req: SampleRequest,
    seed: int,
    device: torch.device,
    runner: Local | None = None,
    image: i2v.ImageStart | hv15.Condition15 | None = None,
) -> torch.Tensor:
    """Final latents (1, C, T, h, w) float32 for one video: Euler over the shifted flow schedule from seeded noise.
    `runner` (default: this process alone) applies real CFG, split over processes with --cfg-parallel; `image`:
    the image-to-video start and model wrapper of this seed (HunyuanVideo 1.5: its `Condition15`)."""
    runner = Local(device) if runner is None else runner
    sigmas = flow_sigmas(req.infer_steps, req.flow_shift)
    cond = cond.to(device)
    uncond = None if uncond is None else uncond.to(device)
    clock = None
    if req.hv15 is not None:
        x = hv15.start_noise(req, seed, device)
        clock = StepClock(sigmas)
        condition = hv15.TEXT_TO_VIDEO if image is None else image
        fn = hv15.network(model, condition.vision, clock)
    else:
        set_riflex(model, riflex_choice(req, model.cfg))
        x = start_noise(req, seed, device)
        fn = dit_fn(model, req.embedded_cfg_scale, step_cache(model, req, cond, uncond))
    if uncond is None:
        model_fn = with_cond(fn, cond)
    else:
        model_fn = runner.guided(fn, cond, uncond, req.cfg_scale)
    if clock is not None:  # 1.5: the condition channels appended, t_r counted per step
        model_fn = clock.outer(hv15.conditioned(model_fn, condition.image, x))
    elif image is not None:
        x, model_fn = image.start(x), image.wrap(model_fn, x.shape[2], device)
    with tqdm(
        total=req.infer_steps, desc=f"denoise seed {seed}", leave=False, disable=not dist_steps.is_main_process()
    ) as bar:

        def step_done(state: dict) -> None:
            bar.update(1)
            check_finite(state["x"], state["i"], req, seed)

        return euler(model_fn, x, sigmas, callback=step_done)


def start_noise(req: SampleRequest, seed: int, device: torch.device) -> torch.Tensor:
    """The start latents (1, C, T, h, w) float32 of video `seed`: ours (a CPU generator, the same on every device), or
    with --noise official as the official sampler draws them: on `device`, the device the DiT runs on (this rank's
    cuda:<local rank> under torchrun, the card even when weights are offloaded), in the LLM text encoder's dtype."""
    shape = latent_shape(1, req.video_length, req.height, req.width, req.latent_channels)
    if req.sampling.noise == "official":
        return official_noise(shape, [seed], device, PRECISIONS[req.text.text_encoder_precision])
    return initial_noise(shape, [seed], device)


def riflex_choice(req: SampleRequest, cfg: DiTConfig) -> int | None:
    """The DiT's `riflex_k` for this request (`--riflex`); `on` with a DiT whose temporal RoPE lacks the component
    is exit 2."""
    try:
        return riflex_k(req.riflex, req.video_length, cfg)
    except ValueError as e:
        raise UsageError("--riflex", f"on: {e}; use auto or off") from None


def set_riflex(model: torch.nn.Module, k: int | None) -> None:
    """Set `riflex_k` on the DiT inside `model`, which may be a wrapper (sequence parallelism) whose own attribute
    the DiT would never read."""
    for m in model.modules():
        if isinstance(m, HYVideoDiT):
            m.riflex_k = k


def check_finite(x: torch.Tensor, i: int, req: SampleRequest, seed: int) -> None:
    """Stop at the first Euler step whose latents hold NaN/inf (one device sync per step); they would decode to a
    black or garbage video."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"seed {seed}: latents became NaN/inf at denoising step {i + 1} of {req.infer_steps} (DiT "
            f"--precision {req.precision}); try --precision fp32 or bf16, or a lower --cfg-scale/--embedded-cfg-scale"
        )


def step_cache(
    model: HYVideoDiT, req: SampleRequest, cond: TextEmbeddings, uncond: TextEmbeddings | None
) -> TeaCache | None:
    """--teacache-thresh > 0: a fresh TeaCache for one video, with named cond/uncond streams; else None."""
    if req.teacache_thresh <= 0:
        return None
    cache = TeaCache(model, req.teacache_thresh, req.infer_steps)
    cache.name_stream(cond.llm_states, "prompt")
    if uncond is not None:
        cache.name_stream(uncond.llm_states, "negative prompt")
    return cache


def decode(vae: HYVideoVAE, latents: torch.Tensor, drop: int = 0) -> torch.Tensor:
    """DiT latents (1, C, T, h, w) -> video (3, F - drop, H, W) in [-1, 1], float32 on the CPU; `drop`: leading
    decoded frames to leave out (4 for latent_concat image-to-video). A progress bar counts the decoder passes
    (tiles / chunks) with an ETA, on the main process only, like the denoising loop's."""
    total = vae.decode_steps(latents.shape)
    with tqdm(total=total, desc="VAE decode", leave=False, disable=not dist_steps.is_main_process()) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        return vae.decode_latents(latents, progress=progress).float().cpu()[0, :, drop:]


def load_decoder(req: SampleRequest, paths: ModelPaths, device: torch.device) -> HYVideoVAE:
    if req.hv15 is not None:
        return hv15.load_decoder(req, paths.vae, device)  # type: ignore[return-value]  # the same decoding API
    vae = load_vae(paths.vae, dtype=PRECISIONS[req.vae_precision], device=device)
    if not req.vae_tiling:
        return vae.disable_tiling()
    return vae.enable_tiling(tile_size=req.vae_tile_size, tile_stride=req.vae_tile_stride)


def latent_channels(req: SampleRequest) -> int:
    """Channels of the DiT's latents: the VAE's (v1: --latent-channels, 16; HunyuanVideo 1.5: 32)."""
    return hv15.LATENT_CHANNELS if req.hv15 is not None else req.latent_channels


def frames_dropped(req: SampleRequest) -> int:
    """Leading decoded frames the video leaves out (v1 latent_concat image-to-video: 4)."""
    if req.hv15 is not None or not req.i2v_mode:
        return 0
    return i2v.decoded_frames_dropped(req.i2v_condition)


def generate_one(
    model: HYVideoDiT,
    vae: HYVideoVAE,
    cond: TextEmbeddings,
    uncond: TextEmbeddings | None,
    req: SampleRequest,
    seed: int,
    device: torch.device,
    timings: Timings,
    image: i2v.ImageStart | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One video with the DiT and the VAE both loaded (batch runs, the Python API): (latents (1, C, T, h, w)
    float32, video (3, F, H, W) in [-1, 1] float32 on the CPU). `image`: this seed's image-to-video start."""
    with timings.stage(f"denoise seed {seed}", device):
        args = (model, cond, uncond, req, seed, device)  # text-to-video: the call as before (tests patch `denoise`)
        latents = denoise(*args) if image is None else denoise(*args, image=image)
    drop = frames_dropped(req)
    with timings.stage(f"decode seed {seed}", device):
        video = decode(vae, latents, drop)
    return latents, video


def write_video(
    req: SampleRequest, path: Path, latents: torch.Tensor | None, video: torch.Tensor, record: dict[str, object]
) -> Path:
    """The latents file (with --save-latents), then the MP4 and its JSON sidecar `record`, each atomic. The
    sidecar is renamed into place right after the MP4, so a video with a sidecar is complete (batch re-runs skip
    exactly those). When writing fails (disk full, the folder removed meanwhile), the latents are kept first
    (`keep_latents`), then the error propagates."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if req.save_latents and latents is not None:
            io.save_latents(latents, io.latents_filename(path), _latents_meta(req, int(record["seed"])))
        with io.atomic_path(sidecar.sidecar_path(path)) as tmp:
            tmp.write_text(sidecar.dumps(record), encoding="utf-8")
            io.write_mp4(video, path, fps=req.fps, signed=True)
    except OSError:
        if latents is not None:
            keep_latents(req, path, latents, int(record["seed"]))
        raise
    return path


def keep_latents(req: SampleRequest, path: Path, latents: torch.Tensor, seed: int) -> Path | None:
    """After a failed write of video `path`: make sure its latents are on disk (the --save-latents file when it was
    written, else `io.save_latents_fallback`: beside the video, else in the temp or home folder) and log one line
    with where they are and the --decode-latents command that finishes the job. None when they cannot be kept."""
    kept = io.latents_filename(path)
    if not (req.save_latents and kept.is_file()):
        try:
            kept = io.save_latents_fallback(latents, kept, _latents_meta(req, seed))
        except OSError as e:
            logger.error(f"seed {seed}: the latents could not be kept: {e.strerror or e}")
            return None
    logger.error(
        f"seed {seed}: writing the video failed; its latents are kept in {kept}; finish with: {finish_command(req, kept)}"
    )
    return kept


def finish_command(req: SampleRequest, latents: Path) -> str:
    """The command that decodes `latents` into the video this request would have written (same name, decode flags
    kept; another --save-path works as well)."""
    argv = ["python", "sample_video.py", "--decode-latents", str(latents), "--model-base", str(req.dit.model_base)]
    argv += ["--save-path", str(req.output.save_dir), "--vae-precision", req.decode.vae_precision]
    if not req.decode.vae_tiling:
        argv.append("--no-vae-tiling")
    else:
        argv += ["--vae-tile-size", str(req.decode.vae_tile_size), "--vae-tile-stride", str(req.decode.vae_tile_stride)]
    argv += ["--fps", str(req.output.fps), "--device", req.runtime.device]
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------------------
def run(req: SampleRequest) -> list[Path]:
    """Generate (or decode) per the request; returns the MP4 paths written (none on ranks other than 0)."""
    if req.runtime.reproduce:
        hardware.make_deterministic()
    timings = Timings({})
    if req.output.decode_latents is not None:
        device = torch.device(req.runtime.device)
        return [decode_only(req, device, timings)] if dist_steps.is_main_process() else []
    if req.hv15 is not None:
        return run15(req, timings)
    if req.i2v_mode:
        req = i2v.resolve(req)
        paths = i2v.model_paths(req)
        cfg = i2v.dit_config(denoiser_config(req, paths), req)
    else:
        paths = locate(req.dit.model_base, req.dit.dit_weight)
        cfg = denoiser_config(req, paths)
    riflex_applied = riflex_choice(req, cfg) is not None  # `on` that cannot apply fails now
    dist_steps.check_degrees(req, cfg)
    verify_vae(paths.vae)  # names and shapes only: a bad VAE must fail now, not after sampling
    runner = dist_steps.start(req)  # joins the torchrun job and sets this rank's device when there is one
    preflight(req.replace(device=str(runner.device)), paths, cfg)  # peak memory on this rank's device; exit 2
    latents = sample(runner, req, paths, cfg, timings)
    if not runner.is_main:
        return []  # the job ended with the last collective; rank 0 decodes and writes alone
    return decode_and_write(req, paths, latents, runner.device, timings, riflex_applied=riflex_applied)


def run15(req: SampleRequest, timings: Timings) -> list[Path]:
    """`run` for HunyuanVideo 1.5 weights: the same steps with the 1.5 folders, sizes and encoders."""
    paths = hv15.paths_of(req)
    cfg = hv15.denoiser_config(req)
    dist_steps.check_degrees(req, cfg)
    verify_vae15(paths.vae)  # names and shapes only: a bad VAE must fail now, not after sampling
    runner = dist_steps.start(req, hv15.Text15Embeddings)  # what rank 0's text encoding gives the other ranks
    preflight(req, None, None, runner.device, plan=hv15.memory_plan(req), sizes=hv15.memory_sizes(req))
    latents = sample(runner, req, paths, cfg, timings)  # type: ignore[arg-type]  # the fields sample reads
    if not runner.is_main:
        return []
    return decode_and_write(req, paths, latents, runner.device, timings)  # type: ignore[arg-type]


def dry_run(req: SampleRequest) -> list[str]:
    """--dry-run: the request's memory plan per stage (device and host) and the cheapest flag set that fits, as
    lines to print. Loads nothing and needs no weights: the sizes come from the configs under --model-base when the
    weights are there, else from the released model (v1: the --model preset; HunyuanVideo 1.5: the release of the
    version the flags name); --ulysses-degree / --ring-degree / --cfg-parallel plan a job of that many processes on
    one machine. The capacity: a card of --gpu-memory GB (host RAM not checked: that machine's is not known here),
    else the free memory of the device present and this machine's RAM; without CUDA, the device is this machine's
    RAM (--gpu-memory plans for a GPU)."""
    plan, sizes, source = _plan15(req) if req.hv15 is not None else _plan_v1(req)
    # the processes on this machine: torchrun's local ones, or (planning a job not started) all of them on one machine
    processes = local_processes() if launched_by_torchrun() else req.parallel.world_size
    plan = replace(plan, device=torch.device(req.runtime.device).type, processes=processes)
    gb = req.runtime.gpu_memory
    if gb is not None:
        plan = replace(plan, device="cuda")
        capacity, host = card_capacity(gb), None
    else:
        capacity, host = None, host_capacity(plan.processes)
    lines = [f"dry run, nothing loaded; sizes from {source}"]
    lines += dry_run_lines(plan, sizes, capacity, host, baseline=current_rss())
    if gb is None and plan.device == "cpu":
        lines.append("planned for this machine's RAM (the device is the CPU); pass --gpu-memory GB to plan for a GPU")
    elif gb is not None:
        lines.append(
            f"planned for a {gb:g} GB card ({CUDA_CONTEXT // 2**20} MiB kept for the CUDA context); host RAM "
            "not checked: give the machine at least the host figure above"
        )
    return lines


def _plan_v1(req: SampleRequest) -> tuple[MemoryPlan, ModelSizes, str]:
    """A v1 request's plan, sizes and where the sizes come from (for `dry_run`)."""
    try:
        paths: ModelPaths | None = locate(req.dit.model_base, req.dit.dit_weight)
        cfg = denoiser_config(req, paths)
        source = f"the configs under {req.dit.model_base}"
    except CheckpointError:
        paths, cfg = None, dit_config(req.dit.model)
        source = f"the released {req.dit.model} (no weights under {req.dit.model_base})"
    return plan_from_request(req), planning_sizes(cfg, paths), source


def _plan15(req: SampleRequest) -> tuple[MemoryPlan, ModelSizes, str]:
    """A HunyuanVideo 1.5 request's plan and sizes, as its preflight computes them (`hv15.memory_plan` /
    `memory_sizes`); without the weights (a dry run validates none), the released version's sizes."""
    version = req.hv15.version
    try:
        located = locate15(req.dit.model_base, version)
    except CheckpointError:
        sizes = full_size_sizes15(meanflow=req.hv15.meanflow)
        source = f"the released HunyuanVideo 1.5 {version} (no weights under {req.dit.model_base})"
    else:
        sizes = hv15.memory_sizes(req.replace(paths=located))
        source = f"the configs under {req.dit.model_base} (HunyuanVideo 1.5 {version})"
    return hv15.memory_plan(req), sizes, source


def seeds(req: SampleRequest) -> list[int]:
    """Video i of a request uses seed + i."""
    return [req.sampling.seed + i for i in range(req.sampling.num_videos)]


def sample(
    runner: Local, req: SampleRequest, paths: ModelPaths, cfg: DiTConfig, timings: Timings
) -> list[torch.Tensor]:
    """Final latents of every video of the request: the text encoded, the DiT loaded once, each seed denoised; the
    DiT is freed and the runner finished (its last collective is behind it) before returning."""
    device = runner.device
    s = req.sampling
    logger.info(f"models: {paths.layout} layout at {req.dit.model_base}; DiT {paths.dit}")
    logger.info(
        f"request: {s.width}x{s.height}, {s.video_length} frames, {s.infer_steps} steps, shift {s.flow_shift}, "
        f"embedded cfg {s.embedded_cfg_scale}, cfg {s.cfg_scale}, seed {s.seed}, {s.num_videos} video(s), "
        f"DiT {req.dit.precision}, VAE {req.decode.vae_precision}, device {device}"
    )
    with timings.stage("text encode", device):
        cond, uncond = runner.encode(lambda: encode_text(req, paths, device))  # rank 0 encodes under torchrun
    images: dict[int, i2v.ImageStart | hv15.Condition15] = {}
    if req.hv15 is not None and req.i2v_mode:
        with timings.stage("image encode", device):
            condition = hv15.encode_image(req, device)
            images = {seed: condition for seed in seeds(req)}
        release_memory()
    elif req.i2v_mode:
        with timings.stage("image encode", device):
            images = i2v.encode_image(req, paths, device, seeds(req))
        release_memory()
    with timings.stage("load DiT", device):
        model = runner.wrap(load_denoiser(req, paths, device, cfg, runner.weight_reader(req)))
    all_latents = []
    for seed in seeds(req):
        with timings.stage(f"denoise seed {seed}", device):
            all_latents.append(denoise(model, cond, uncond, req, seed, device, runner, images.get(seed)))
    del model
    release_memory()
    runner.finish()
    return all_latents


def decode_and_write(
    req: SampleRequest,
    paths: ModelPaths,
    all_latents: list[torch.Tensor],
    device: torch.device,
    timings: Timings,
    riflex_applied: bool | None = None,
) -> list[Path]:
    """Decode each video's latents with the VAE (loaded once) and write it with its sidecar (`riflex_applied`:
    whether the DiT ran with RIFLEx, for the record)."""
    with timings.stage("load VAE", device):
        vae = load_decoder(req, paths, device)
    when = datetime.now()
    written = []
    drop = frames_dropped(req)
    for seed, latents in zip(seeds(req), all_latents, strict=True):
        with timings.stage(f"decode seed {seed}", device):
            video = decode(vae, latents, drop)
        with timings.stage(f"write seed {seed}", device):
            path = output_path(req, seed, when)
            record = sidecar.build(
                req,
                seed,
                paths,
                timings=timings.seconds,
                peak_memory_mib=timings.peak_mib,
                riflex_applied=riflex_applied,
            )
            written.append(write_video(req, path, latents, video, record))
    total = sum(timings.seconds.values())
    logger.info(f"done in {total:.1f} s; peak host RSS {peak_host_mb():.0f} MiB")
    return written


def output_path(req: SampleRequest, seed: int, when: datetime) -> Path:
    """Where video `seed` goes: generate.py's --output_path as given (1.5, one video), else our naming scheme."""
    if req.hv15 is not None and req.hv15.output_file is not None:
        return req.hv15.output_file
    return io.video_filename(req.save_dir, seed, req.prompt or "", when, req.name_suffix)


def _latents_meta(req: SampleRequest, seed: int) -> dict[str, object]:
    drop = frames_dropped(req)
    return {
        "decoded_frames_dropped": drop,  # leading decoded frames the video leaves out (latent_concat: 4)
        "prompt": req.prompt,
        "seed": seed,
        "height": req.height,
        "width": req.width,
        "video_length": req.video_length,
        "infer_steps": req.infer_steps,
        "flow_shift": req.flow_shift,
        "embedded_cfg_scale": req.embedded_cfg_scale,
        "cfg_scale": req.cfg_scale,
        "noise": req.noise,
    }


def decode_only(req: SampleRequest, device: torch.device, timings: Timings) -> Path:
    """--decode-latents FILE: decode saved latents with the VAE under --model-base and write the MP4 beside it."""
    try:
        latents, meta = io.load_latents(req.decode_latents)
    except (KeyError, OSError, ValueError) as e:
        raise UsageError("--decode-latents", f"{req.decode_latents}: not a latents file ({e})") from None
    if latents.ndim != 5 or latents.shape[1] != latent_channels(req):
        raise UsageError(
            "--decode-latents", f"expected (1, {latent_channels(req)}, T, h, w), got {tuple(latents.shape)}"
        )
    if req.hv15 is not None:
        paths = hv15.paths_of(req)
    else:
        paths = locate(req.model_base, req.dit_weight, need_text=False, need_dit=False)
    with timings.stage("load VAE", device):
        vae = load_decoder(req, paths, device)
    drop = meta.get("decoded_frames_dropped", "0")
    if not drop.isdigit():
        raise UsageError("--decode-latents", f"{req.decode_latents}: bad decoded_frames_dropped {drop!r}")
    with timings.stage("decode", device):
        video = decode(vae, latents.to(device), int(drop))
    name = Path(req.decode_latents).name.removesuffix(".latents.safetensors").removesuffix(".safetensors") + ".mp4"
    with timings.stage("write", device):
        record = sidecar.for_decoded(req, latents.shape, meta, timings.seconds, timings.peak_mib, paths.vae)
        path = write_video(req.replace(save_latents=False), req.save_dir / name, None, video, record)
    logger.info(f"decoded {req.decode_latents} (prompt {record.get('prompt')!r}, seed {record.get('seed', '?')})")
    return path
