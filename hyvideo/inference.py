"""The official package's Python interface, so scripts written for Tencent's `hyvideo` run unchanged:

    from hyvideo.config import parse_args
    from hyvideo.inference import HunyuanVideoSampler
    from hyvideo.utils.file_utils import save_videos_grid

    args = parse_args()
    sampler = HunyuanVideoSampler.from_pretrained(Path(args.model_base), args=args)
    out = sampler.predict(prompt=args.prompt, height=args.video_size[0], width=args.video_size[1], ...)
    for i, sample in enumerate(out["samples"]):
        save_videos_grid(sample.unsqueeze(0), f"results/seed{out['seeds'][i]}.mp4", fps=24)

`predict` returns {"samples": (B, 3, T, H, W) float32 in [0, 1] on the CPU, "seeds": [B ints], "prompts": [B str],
"size": (H, W, T)}, B = num_videos_per_prompt. One difference: "prompts" holds one entry per sample (the official
code returns one per prompt, which breaks its own save loop for several videos). It is built on `hyvideo.api`.

Image-to-video as the official HunyuanVideo-I2V sampler: load with `args.i2v_mode` (`--i2v-mode`), then
`predict(..., i2v_mode=True, i2v_image_path="cat.png", i2v_resolution="720p", i2v_stability=...)` (or
`i2v_image=` a PIL image). As in the official code, the size is the image's bucket (height and width are not used)
and `i2v_stability` defaults to True; the official scripts pass `args.i2v_stability`.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from hyvideo.api import Generator
from hyvideo.choices import RANDOM_SEED_MAX


class HunyuanVideoSampler:
    """Models loaded once (`from_pretrained`), then `predict` per prompt."""

    def __init__(self, generator: Generator, args: argparse.Namespace) -> None:
        self.generator = generator
        self.args = args  # the official code reads the updated args back from the sampler

    @classmethod
    def from_pretrained(
        cls, pretrained_model_path: str | Path, args: argparse.Namespace, device: str | torch.device | None = None,
        **kwargs: object,
    ) -> HunyuanVideoSampler:  # fmt: skip
        """Load every component under `pretrained_model_path` (the official `ckpts` folder or a diffusers folder)
        with the settings in `args` (a `hyvideo.config.parse_args()` Namespace)."""
        args = argparse.Namespace(**vars(args))
        args.model_base = str(pretrained_model_path)
        if device is not None:
            args.device = str(device)
        return cls(Generator.from_args(args), args)

    @torch.no_grad()
    def predict(
        self,
        prompt: str,
        height: int = 192,
        width: int = 336,
        video_length: int = 129,
        seed: int | Sequence[int] | torch.Tensor | None = None,
        negative_prompt: str | None = None,
        infer_steps: int = 50,
        guidance_scale: float = 6.0,
        flow_shift: float = 5.0,
        embedded_guidance_scale: float | None = None,
        batch_size: int = 1,
        num_videos_per_prompt: int = 1,
        i2v_mode: bool = False,
        i2v_resolution: str = "720p",
        i2v_image_path: str | Path | None = None,
        i2v_condition_type: str | None = None,
        i2v_stability: bool = True,
        i2v_image: object | None = None,
        **kwargs: object,
    ) -> dict[str, object]:
        """Generate `num_videos_per_prompt` videos (official defaults and seed rules: an int gives seed + i, a list
        gives the seeds, None draws each at random). `guidance_scale` is real classifier-free guidance (1 = off);
        `embedded_guidance_scale` None means the value in `args` (6.0 by default)."""
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string, but got {type(prompt)}")
        n = batch_size * num_videos_per_prompt
        seeds = self._seeds(seed, batch_size, num_videos_per_prompt)
        loaded = self.generator.request
        if i2v_mode != loaded.i2v_mode:
            how = "--i2v-mode (args.i2v_mode)" if i2v_mode else "text-to-video arguments"
            raise ValueError(f"i2v_mode={i2v_mode}: the sampler was loaded for the other mode; load it with {how}")
        if i2v_mode and i2v_condition_type not in (None, loaded.i2v_condition):
            raise ValueError(
                f"i2v_condition_type: {i2v_condition_type}, but the loaded weights are {loaded.i2v_condition}"
            )
        image_args: dict[str, object] = {}
        if i2v_mode:  # the official sampler sizes the video from the image's bucket
            image_args = dict(i2v_image_path=i2v_image_path, i2v_image=i2v_image, i2v_resolution=i2v_resolution,
                              i2v_stability=i2v_stability)  # fmt: skip
        videos = self.generator.generate(
            prompt,
            height=None if i2v_mode else height,
            width=None if i2v_mode else width,
            video_length=video_length,
            seed=seeds,
            infer_steps=infer_steps,
            cfg_scale=guidance_scale,
            embedded_cfg_scale=embedded_guidance_scale,
            flow_shift=flow_shift,
            negative_prompt=negative_prompt,
            **image_args,  # type: ignore[arg-type]
        )
        req = videos[0].request
        return {
            "samples": torch.stack([v.frames for v in videos]),  # (B, 3, T, H, W)
            "seeds": [v.seed for v in videos],
            "prompts": [v.prompt for v in videos][:n],
            "size": (req.height, req.width, req.video_length),
        }

    @staticmethod
    def _seeds(seed: int | Sequence[int] | torch.Tensor | None, batch_size: int, per_prompt: int) -> list[int]:
        """The official seed rules for batch_size x per_prompt videos."""
        if isinstance(seed, torch.Tensor):
            seed = seed.tolist()
        n = batch_size * per_prompt
        if seed is None:
            return [random.randint(0, RANDOM_SEED_MAX) for _ in range(n)]
        if isinstance(seed, int):
            return [seed + i for _ in range(batch_size) for i in range(per_prompt)]
        if isinstance(seed, Sequence):
            if len(seed) == batch_size:
                return [int(seed[i]) + j for i in range(batch_size) for j in range(per_prompt)]
            if len(seed) == n:
                return [int(s) for s in seed]
            raise ValueError(f"seed: give {batch_size} or {n} seeds (batch_size x num_videos_per_prompt), got {seed}")
        raise ValueError(f"seed must be an integer, a list of integers or None, got {seed!r}")
