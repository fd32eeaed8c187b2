"""The Python API: load the models once, generate many videos.

    from hyvideo.api import Generator

    gen = Generator("ckpts", precision="bf16")                  # text encoders, DiT and VAE load here
    [video] = gen.generate("a cat walks on the grass", height=544, width=960, video_length=129, seed=42)
    video.frames                                                # (3, T, H, W) float32 in [0, 1], on the CPU
    video.save("results/cat.mp4")                               # MP4 + JSON sidecar, atomically

Every argument is checked exactly like the command line's flag of the same name (`ValueError` with the flag's
message); `flags` passes any other command-line flag (e.g. `["--offload", "model"]`). `hyvideo.inference` wraps this
class in the official `HunyuanVideoSampler` interface.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from hyvideo import pipeline, sidecar
from hyvideo.checkpoints.layout import ModelPaths, locate
from hyvideo.modules.text_encoders import TextEmbeddings, TextEncoders
from hyvideo.request import SampleRequest, UsageError, validate

_PLACEHOLDER_PROMPT = "-"  # validation needs a prompt; each generate() call brings its own


@dataclass(frozen=True)
class Video:
    """One generated video."""

    frames: torch.Tensor  # (3, T, H, W) float32 in [0, 1], CPU
    latents: torch.Tensor  # (1, C, (T-1)//4+1, H/8, W/8) float32, the final denoised latents
    seed: int
    prompt: str
    request: SampleRequest  # everything it was made with
    record: dict[str, object]  # the sidecar record (see hyvideo.sidecar)

    def save(self, path: str | Path, fps: int | None = None) -> Path:
        """Write `path` (MP4, H.264) and its JSON sidecar beside it, atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        req = self.request if fps is None else _replace(self.request, fps=fps)
        record = {**self.record, "fps": req.fps}
        return pipeline.write_video(req, path, self.latents, self.frames * 2 - 1, record)


def _replace(req: SampleRequest, **changes: object) -> SampleRequest:
    import dataclasses

    return dataclasses.replace(req, **changes)


class Generator:
    """Text encoders, DiT and VAE loaded once (all resident: the fastest for many calls, the most memory; for the
    least memory per video use the command line, which frees each component after use)."""

    def __init__(
        self,
        model_base: str | Path = "ckpts",
        *,
        device: str | None = None,
        precision: str = "bf16",
        vae_precision: str = "fp16",
        text_encoder_precision: str = "fp16",
        dit_weight: str | Path | None = None,
        loras: Sequence[str | Path | tuple[str | Path, float]] = (),
        flags: Sequence[str] = (),
    ) -> None:
        argv = ["--model-base", str(model_base), "--precision", precision, "--vae-precision", vae_precision]
        argv += [
            "--text-encoder-precision",
            text_encoder_precision,
            "--text-encoder-precision-2",
            text_encoder_precision,
        ]
        argv += ["--device", device] if device else []
        argv += ["--dit-weight", str(dit_weight)] if dit_weight else []
        for lora in loras:
            argv += ["--lora", f"{lora[0]}:{lora[1]}" if isinstance(lora, tuple) else str(lora)]
        from hyvideo.cli import build_parser

        try:
            args = build_parser().parse_args([*argv, *flags])
        except UsageError as e:
            raise ValueError(str(e)) from None
        self._init(args)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Generator:
        """From a Namespace of the command-line parser (e.g. `hyvideo.config.parse_args()`)."""
        self = cls.__new__(cls)
        self._init(copy.copy(args))
        return self

    def _init(self, args: argparse.Namespace) -> None:
        args.prompt_file = None
        if not (args.prompt or "").strip():
            args.prompt = _PLACEHOLDER_PROMPT
        self.args = args
        self.request = self._validate()
        req = self.request
        self.device = torch.device(req.device)
        self.paths: ModelPaths = locate(req.model_base, req.dit_weight)
        self.timings = pipeline.Timings({})
        with self.timings.stage("load text encoders", self.device):
            self.encoders = TextEncoders(pipeline.text_config(req, self.paths), self.device)
        with self.timings.stage("load DiT", self.device):
            self.model = pipeline.load_denoiser(req, self.paths, self.device)
        with self.timings.stage("load VAE", self.device):
            self.vae = pipeline.load_decoder(req, self.paths, self.device)
        self._cache: dict[tuple[str, int], TextEmbeddings] = {}

    def _validate(self, **values: object) -> SampleRequest:
        ns = argparse.Namespace(**{**vars(self.args), **{k: v for k, v in values.items() if v is not None}})
        logger.disable("hyvideo.request")
        try:
            return validate(ns)
        except UsageError as e:
            raise ValueError(str(e)) from None
        finally:
            logger.enable("hyvideo.request")

    def _encode(self, text: str, frames: int) -> TextEmbeddings:
        key = (text, min(frames, 2))  # the 1-frame and the video template differ
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = self.encoders.encode([text], frames)
        return self._cache[key]

    def generate(
        self,
        prompt: str,
        *,
        height: int | None = None,
        width: int | None = None,
        video_length: int | None = None,
        seed: int | Sequence[int] | None = None,
        num_videos: int = 1,
        infer_steps: int | None = None,
        cfg_scale: float | None = None,
        embedded_cfg_scale: float | None = None,
        flow_shift: float | None = None,
        negative_prompt: str | None = None,
    ) -> list[Video]:
        """Videos for `prompt`; None keeps the value given at construction (or the command-line default: 720x1280,
        129 frames, 50 steps, shift 7, embedded guidance 6, no real CFG). `seed`: video i uses seed + i; a list gives
        each video's seed; None draws one at random. Sizes round up to multiples of 16 as on the command line."""
        seeds = list(seed) if isinstance(seed, Sequence) else None
        if seeds is not None and not seeds:
            raise ValueError("seed: give at least one seed")
        req = self._validate(
            prompt=prompt,
            video_size=[height or self.args.video_size[0], width or self.args.video_size[1]],
            video_length=video_length,
            seed=seeds[0] if seeds else seed,
            num_videos=len(seeds) if seeds else num_videos,
            infer_steps=infer_steps,
            cfg_scale=cfg_scale,
            embedded_cfg_scale=embedded_cfg_scale,
            flow_shift=flow_shift,
            neg_prompt=negative_prompt,
        )
        seeds = seeds or [req.seed + i for i in range(req.num_videos)]
        cond = self._encode(req.prompt or "", req.video_length)
        uncond = self._encode(req.neg_prompt, req.video_length) if req.cfg_scale > 1 and req.neg_prompt else None
        videos = []
        for s in seeds:
            timings = pipeline.Timings({})
            latents, video = pipeline.generate_one(
                self.model, self.vae, cond, uncond, req, int(s), self.device, timings
            )
            one = _replace(req, seed=int(s), num_videos=1)
            record = sidecar.build(
                one,
                int(s),
                self.paths,
                timings={**self.timings.seconds, **timings.seconds},
                peak_memory_mib={**self.timings.peak_mib, **timings.peak_mib},
            )
            frames = ((video + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]
            videos.append(Video(frames, latents.cpu(), int(s), req.prompt or "", one, record))
        return videos

    def close(self) -> None:
        """Free the models (the object cannot generate afterwards)."""
        self.encoders.free()
        self.model = self.vae = None  # type: ignore[assignment]
        pipeline._release_memory()
