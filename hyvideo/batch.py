"""Batch mode (`--prompt-file`): every entry of a prompt file with the models loaded once, resumable, and split over
torchrun ranks.

- Names are deterministic: `{line:04d}_seed{seed}_{slug}{suffix}.mp4` (line = the entry's line in the file, seed =
  the video's seed), each with its JSON sidecar. A video counts as finished when both files exist (the sidecar is
  renamed into place right after the MP4), so a re-run skips finished videos without loading anything, and a run
  stopped by Ctrl-C or a kill resumes where it stopped. An entry without a seed (no `seed` on the line, no --seed)
  reuses the seed recorded in the sidecars of its earlier outputs.
- Order of work: text encoders load once, encode every pending entry and are freed; then the DiT and the VAE load
  once and each entry is denoised, decoded and written before the next starts (nothing finished is lost on a stop).
- An entry that fails (e.g. NaN latents) is logged and the batch goes on; `BatchResult.ok` is False if any failed
  (exit code 1). A summary table ends the run.
- Under torchrun (without sequence-parallel degrees) every rank takes the entries with index % world_size == rank
  and writes its own files (data parallel; the same resume rules hold). Ranks meet once at the end (gloo) so rank 0
  prints one summary for all; a rank that fails does not touch the others' files.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from loguru import logger

from hyvideo import hardware, hv15, i2v, io, pipeline, sidecar
from hyvideo.checkpoints.layout import Model15Paths, ModelPaths, locate
from hyvideo.checkpoints.vae15 import verify_vae15
from hyvideo.checkpoints.verify import verify_vae
from hyvideo.config import DiTConfig
from hyvideo.errors import UsageError
from hyvideo.memory import (
    ModelSizes,
    check_fits,
    current_rss,
    device_capacity,
    estimate,
    model_sizes,
    plan_from_request,
)
from hyvideo.modules.llava_encoder import I2VTextEncoders
from hyvideo.modules.text_encoders import TextEmbeddings, TextEncoders
from hyvideo.parallel import group as process_group
from hyvideo.parallel.group import launched_by_torchrun
from hyvideo.parallel.steps import Embeddings
from hyvideo.prompt_file import Batch, BatchItem
from hyvideo.request import SampleRequest

GATHER_TIMEOUT = timedelta(days=7)  # ranks wait for the slowest one at the end; its share may take a long time


@dataclass
class ItemResult:
    """What happened to one prompt-file entry on this run."""

    line: int  # line in the prompt file
    index: int  # entry index
    prompt: str
    seeds: list[int]  # seeds of the entry's videos
    status: str  # "done" (generated now), "skipped" (finished earlier), "failed"
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)  # MP4 names written now or found finished
    error: str | None = None  # one line, for failed entries
    rank: int = 0


@dataclass
class BatchResult:
    items: list[ItemResult]

    @property
    def ok(self) -> bool:
        return not any(r.status == "failed" for r in self.items)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.items)


@dataclass
class Job:
    """One entry, planned: its request (seed resolved) and the output path of each video."""

    item: BatchItem
    request: SampleRequest
    outputs: list[tuple[int, Path]]  # (seed, MP4 path) per video, video k has seed request.seed + k

    @property
    def pending(self) -> list[tuple[int, int, Path]]:
        """(video index, seed, path) of the videos not finished yet."""
        return [(k, s, p) for k, (s, p) in enumerate(self.outputs) if not is_finished(p)]


# ---------------------------------------------------------------------------------------------------------------
# Names, seeds, planning
# ---------------------------------------------------------------------------------------------------------------
def output_path(req: SampleRequest, line: int, seed: int) -> Path:
    """`{save_dir}/{line:04d}_seed{seed}_{slug}{_suffix}.mp4` for a prompt-file entry (no time stamp: a re-run finds
    it again)."""
    tail = f"_{io.slugify(req.name_suffix)}" if req.name_suffix else ""
    return req.save_dir / f"{line:04d}_seed{seed}_{io.slugify(req.prompt or '')}{tail}.mp4"


def is_finished(path: Path) -> bool:
    """The MP4 and its sidecar both exist (the sidecar lands last)."""
    return path.is_file() and sidecar.sidecar_path(path).is_file()


def recorded_seed(req: SampleRequest, line: int) -> int | None:
    """The base seed of earlier outputs of this entry, read from their sidecars (for entries without a seed)."""
    stem = output_path(req, line, 0).name.replace("_seed0_", "_seed*_").removesuffix(".mp4")
    for path in sorted(req.save_dir.glob(stem + ".json")):
        record = sidecar.read(path) or {}
        batch = record.get("batch")
        if isinstance(batch, dict) and batch.get("line") == line and record.get("prompt") == req.prompt:
            try:
                return int(batch["base_seed"])
            except (KeyError, TypeError, ValueError):
                continue
    return None


def plan(item: BatchItem) -> Job:
    req = item.request
    if (
        req.i2v_mode and req.hv15 is None
    ):  # the prompt checks and negative-prompt default of a single image-to-video run
        try:
            req = i2v.resolve(req)
        except UsageError as e:
            raise UsageError("--prompt-file", f"{req.output.prompt_file} line {item.line}: {e}") from None
    if item.seed_is_random and (seed := recorded_seed(req, item.line)) is not None:
        req = req.replace(seed=seed)
    outputs = [(req.seed + k, output_path(req, item.line, req.seed + k)) for k in range(req.num_videos)]
    return Job(item, req, outputs)


# ---------------------------------------------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranks:
    rank: int  # global rank (torchrun RANK); 0 without torchrun
    world: int  # WORLD_SIZE; 1 without torchrun

    def owns(self, item: BatchItem) -> bool:
        """Static split by entry index: rank r takes the entries with index % world == r."""
        return item.index % self.world == self.rank


def ranks() -> Ranks:
    """This process's place under torchrun. `validate` lets a prompt file run under torchrun only without
    sequence-parallel degrees, so every process works alone on its share."""
    if not launched_by_torchrun():
        return Ranks(0, 1)
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))


def rank_device(device: str) -> str:
    """`cuda` means this rank's GPU (LOCAL_RANK) under torchrun."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _gather(results: list[ItemResult], where: Ranks) -> list[ItemResult]:
    """Every rank's results (on every rank), through a gloo group; this rank's alone without torchrun."""
    if where.world == 1:
        return results
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT) if dist.get_backend() != "gloo" else None
    everyone: list[list[ItemResult] | None] = [None] * where.world
    dist.all_gather_object(everyone, results, group=group)
    # Every rank leaves together right after the last collective: a process that exits with its gloo group alive
    # can die in the group's teardown (std::terminate, SIGABRT: measured 3 runs in 30 of a 2-rank gather).
    process_group.shutdown()
    merged = [r for part in everyone for r in (part or [])]
    unique = {(r.index, r.rank): r for r in merged}
    return sorted(unique.values(), key=lambda r: (r.index, r.rank))


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
def run_batch(batch: Batch) -> BatchResult:
    """Generate every pending entry of the batch that belongs to this rank; returns all ranks' results."""
    req = batch.request
    where = ranks()
    device = torch.device(rank_device(req.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if req.runtime.reproduce:
        hardware.make_deterministic()
    mine = [item for item in batch.items if where.owns(item)]
    jobs = [plan(item) for item in mine]
    results: list[ItemResult] = []
    todo = []
    for job in jobs:
        if job.pending:
            todo.append(job)
        else:
            results.append(_result(job, "skipped", where, files=[p.name for _, p in job.outputs]))
    models = _models(req) if todo else None  # its checks (exit 2) come before anything is logged or loaded
    share = f"rank {where.rank}/{where.world}: " if where.world > 1 else ""
    logger.info(
        f"{share}{batch.path}: {len(jobs)} entr{'y' if len(jobs) == 1 else 'ies'}, "
        f"{len(jobs) - len(todo)} finished earlier, {len(todo)} to do"
    )
    try:
        if models is not None:
            req.save_dir.mkdir(parents=True, exist_ok=True)
            results += _generate(req, todo, device, where, models)
    except KeyboardInterrupt:
        logger.warning("interrupted: finished videos are kept; run the same command again to resume")
        raise
    everyone = _gather(sorted(results, key=lambda r: r.index), where)
    if where.rank == 0:
        log_summary(everyone)
    return BatchResult(everyone)


def _result(job: Job, status: str, where: Ranks, **kw: object) -> ItemResult:
    seeds = [s for s, _ in job.outputs]
    return ItemResult(job.item.line, job.item.index, job.request.prompt or "", seeds, status, rank=where.rank, **kw)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:300]}"


def _encode(
    req: SampleRequest, paths: ModelPaths, todo: list[Job], device: torch.device, failed: list[ItemResult], where: Ranks
) -> dict[int, Embeddings]:
    """Embeddings on the CPU per entry line, the encoders loaded once and freed; entries that fail are recorded.
    HunyuanVideo-I2V encodes each entry's prompt with its image through the LLaVA (no cache: the image differs)."""
    if req.hv15 is not None:
        return _encode15(req, todo, device, failed, where)
    llava = req.i2v_mode and i2v.uses_llava(req)
    encoders = I2VTextEncoders(i2v.llava_config(req, paths), device) if llava else None
    text_encoders = None if llava else TextEncoders(pipeline.text_config(req, paths), device)
    cache: dict[tuple[str, int], TextEmbeddings] = {}  # (text, 1-frame or video template) -> embeddings

    def encode(text: str, frames: int) -> TextEmbeddings:
        key = (text, min(frames, 2))
        if key not in cache:
            cache[key] = text_encoders.encode([text], frames).to("cpu")
        return cache[key]

    def encode_job(r: SampleRequest) -> Embeddings:
        if encoders is not None:
            cond, uncond = i2v.encode_with(encoders, r)
            return cond.to("cpu"), None if uncond is None else uncond.to("cpu")
        cond = encode(r.prompt or "", r.video_length)
        return cond, encode(r.neg_prompt, r.video_length) if r.cfg_scale > 1 and r.neg_prompt else None

    out: dict[int, Embeddings] = {}
    try:
        for job in todo:
            try:
                out[job.item.line] = encode_job(job.request)
            except Exception as e:
                logger.error(f"line {job.item.line}: text encoding failed: {_one_line(e)}")
                failed.append(_result(job, "failed", where, error=f"text encoding: {_one_line(e)}"))
    finally:
        (encoders or text_encoders).free()
    return out


def _encode15(
    req: SampleRequest, todo: list[Job], device: torch.device, failed: list[ItemResult], where: Ranks
) -> dict[int, Embeddings]:
    """HunyuanVideo 1.5: Qwen2.5-VL + byT5 loaded once, each entry's prompt and negative prompt encoded."""
    encoder = hv15.load_text(req, device)
    out: dict[int, Embeddings] = {}
    try:
        for job in todo:
            try:
                out[job.item.line] = hv15.encode_with(encoder, job.request)
            except Exception as e:
                logger.error(f"line {job.item.line}: text encoding failed: {_one_line(e)}")
                failed.append(_result(job, "failed", where, error=f"text encoding: {_one_line(e)}"))
    finally:
        encoder.free()
    return out


def _encode_images15(
    req: SampleRequest, todo: list[Job], device: torch.device, failed: list[ItemResult], where: Ranks
) -> dict[int, dict[int, hv15.Condition15]]:
    """HunyuanVideo 1.5 image-to-video: each entry's image latent and SigLIP states (the same for its seeds), the
    VAE and SigLIP loaded once."""
    vae, vision = hv15.load_encoder(req, device), hv15.load_vision(req, device)
    out: dict[int, dict[int, hv15.Condition15]] = {}
    try:
        for job in todo:
            try:
                condition = hv15.encode_image(job.request, device, vae, vision)
                out[job.item.line] = {s: condition for _, s, _ in job.pending}
            except Exception as e:
                logger.error(f"line {job.item.line}: image encoding failed: {_one_line(e)}")
                failed.append(_result(job, "failed", where, error=f"image encoding: {_one_line(e)}"))
    finally:
        vision.free()
        del vae
    return out


def _encode_images(
    req: SampleRequest, paths: ModelPaths, todo: list[Job], device: torch.device, failed: list[ItemResult], where: Ranks
) -> dict[int, dict[int, i2v.ImageStart]]:
    """Image-to-video: each entry's image starts by seed (CPU), the VAE encoder loaded once and freed."""
    vae = i2v.load_encoder(req, paths, device)
    out: dict[int, dict[int, i2v.ImageStart]] = {}
    try:
        for job in todo:
            try:
                out[job.item.line] = i2v.encode_image(job.request, paths, device, [s for _, s, _ in job.pending], vae)
            except Exception as e:
                logger.error(f"line {job.item.line}: image encoding failed: {_one_line(e)}")
                failed.append(_result(job, "failed", where, error=f"image encoding: {_one_line(e)}"))
    finally:
        del vae
    return out


def _models(req: SampleRequest) -> tuple[ModelPaths | Model15Paths, DiTConfig]:
    """The components and the DiT config, as a single run of the same request finds them."""
    if req.hv15 is not None:
        return hv15.paths_of(req), hv15.denoiser_config(req)
    if req.i2v_mode:
        paths = i2v.model_paths(req)
        return paths, i2v.dit_config(pipeline.denoiser_config(req, paths), req)
    paths = locate(req.model_base, req.dit_weight)
    return paths, pipeline.denoiser_config(req, paths)


def _generate(
    req: SampleRequest,
    todo: list[Job],
    device: torch.device,
    where: Ranks,
    models: tuple[ModelPaths | Model15Paths, DiTConfig],
) -> list[ItemResult]:
    """The pending jobs: memory checked per entry, then text encoders, DiT and VAE loaded once for all of them.
    `models`: `_models(req)`, the same for every entry."""
    results: list[ItemResult] = []
    paths, cfg = models
    if req.hv15 is None:  # names and shapes only: a bad VAE must fail before hours of sampling
        verify_vae(paths.vae)
    else:
        verify_vae15(paths.vae)
    sizes = model_sizes(cfg, paths) if req.hv15 is None else hv15.memory_sizes(req)
    todo = _fitting(todo, sizes, device, where, results)  # entries that cannot fit fail now, before any loading
    if not todo:
        return results
    load = pipeline.Timings({})
    with load.stage("text encode", device):
        embeddings = _encode(req, paths, todo, device, results, where)
    todo = [job for job in todo if job.item.line in embeddings]
    images: dict[int, dict[int, i2v.ImageStart | hv15.Condition15]] = {}
    if req.i2v_mode:
        with load.stage("image encode", device):
            if req.hv15 is not None:
                images = _encode_images15(req, todo, device, results, where)
            else:
                images = _encode_images(req, paths, todo, device, results, where)
        todo = [job for job in todo if job.item.line in images]
        pipeline.release_memory()
    if not todo:
        return results
    with load.stage("load DiT", device):
        model = pipeline.load_denoiser(req, paths, device, cfg)
    with load.stage("load VAE", device):
        vae = pipeline.load_decoder(req, paths, device)
    for n, job in enumerate(todo, start=1):
        r, line = job.request, job.item.line
        logger.info(f"[{n}/{len(todo)}] line {line}: {r.prompt!r:.80} ({r.width}x{r.height}, {r.video_length} frames)")
        t0 = time.perf_counter()
        written = [p.name for _, p in job.outputs if is_finished(p)]
        cond, uncond = embeddings.pop(line)
        starts = images.pop(line, {})
        try:
            for k, seed, path in job.pending:
                timings = pipeline.Timings({})
                latents, video = pipeline.generate_one(
                    model, vae, cond, uncond, r, seed, device, timings, starts.get(seed)
                )
                record = sidecar.build(
                    r,
                    seed,
                    paths,
                    timings={**load.seconds, **timings.seconds},
                    peak_memory_mib={**load.peak_mib, **timings.peak_mib},
                    extra={"batch": _batch_record(job, k)},
                )
                pipeline.write_video(r, path, latents, video, record)
                written.append(path.name)
        except KeyboardInterrupt:
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # every later entry would fail the same way
                logger.error(f"line {line}: {_one_line(e)}; stopping: free disk space, then run again to resume")
                raise
            results.append(_failed(job, where, t0, written, e))
            continue
        except Exception as e:
            results.append(_failed(job, where, t0, written, e))
            continue
        results.append(_result(job, "done", where, seconds=time.perf_counter() - t0, files=written))
    return results


def _fitting(
    todo: list[Job], sizes: ModelSizes, device: torch.device, where: Ranks, failed: list[ItemResult]
) -> list[Job]:
    """The memory preflight for every entry (from the configs, nothing loaded): entries whose estimated peak does not
    fit the device are recorded as failed with the reason; the largest estimate is logged once."""
    baseline, capacity = current_rss(), device_capacity(str(device))
    fits, largest = [], None
    for job in todo:
        plan = plan_from_request(job.request) if job.request.hv15 is None else hv15.memory_plan(job.request)
        est = estimate(plan, sizes, baseline=baseline)
        problem = check_fits(est, capacity)
        if problem is not None and job.request.memory_check:
            logger.error(f"line {job.item.line}: {problem}")
            failed.append(_result(job, "failed", where, error=problem))
            continue
        if problem is not None:
            logger.warning(f"line {job.item.line}: {problem}; continuing because of --no-memory-check")
        fits.append(job)
        largest = est if largest is None or est.device_peak > largest.device_peak else largest
    if largest is not None:
        logger.info("largest entry's memory estimate:")
        for line in largest.lines():
            logger.info(line)
    return fits


def _failed(job: Job, where: Ranks, t0: float, written: list[str], e: Exception) -> ItemResult:
    """Log a failed entry and free what its attempt held (e.g. after a CUDA out-of-memory error)."""
    logger.error(f"line {job.item.line}: failed, going on with the next entry: {_one_line(e)}")
    pipeline.release_memory()
    return _result(job, "failed", where, seconds=time.perf_counter() - t0, files=written, error=_one_line(e))


def _batch_record(job: Job, video: int) -> dict[str, object]:
    prompt_file = job.request.output.prompt_file
    return {
        "prompt_file": str(prompt_file.resolve()) if prompt_file else None,
        "line": job.item.line,
        "index": job.item.index,
        "video": video,
        "base_seed": job.request.seed,
        "seed_was_random": job.item.seed_is_random,
    }


def summary_table(results: list[ItemResult]) -> list[str]:
    """Rows of the end-of-run table: line, seeds, status, seconds, file or error."""
    rows = [f"{'line':>6}  {'seed(s)':<14} {'status':<8} {'time s':>8}  output / error"]
    for r in results:
        seeds = str(r.seeds[0]) if len(r.seeds) == 1 else f"{r.seeds[0]}..{r.seeds[-1]}"
        what = r.error if r.status == "failed" else (", ".join(r.files) or "-")
        rows.append(f"{r.line:>6}  {seeds:<14} {r.status:<8} {r.seconds:>8.1f}  {what}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    rows.append(
        f"{len(results)} entries: {counts['done']} generated, {counts['skipped']} finished earlier (skipped), "
        f"{counts['failed']} failed"
    )
    return rows


def log_summary(results: list[ItemResult]) -> None:
    for row in summary_table(results):
        logger.info(row)
    failed = [r.line for r in results if r.status == "failed"]
    if failed:
        logger.error(f"failed lines: {', '.join(map(str, failed))}; run the same command again to retry them")
