"""The Python API: load the models once, generate many videos.

    from hyvideo.api import Generator

    gen = Generator("ckpts", precision="bf16")                  # text encoders, DiT and VAE load here
    [video] = gen.generate("a cat walks on the grass", height=544, width=960, video_length=129, seed=42)
    video.frames                                                # (3, T, H, W) float32 in [0, 1], on the CPU
    video.save("results/cat.mp4")                               # MP4 + JSON sidecar, atomically

Every argument is checked exactly like the command line's flag of the same name (`ValueError` with the flag's
message): the values go straight into `hyvideo.request.validate`, the command line's own checks. `flags` passes any
other command-line flag (e.g. `["--offload", "model"]`). `hyvideo.inference` wraps this class in the official
`HunyuanVideoSampler` interface.

Image-to-video: `Generator("ckpts", i2v_mode=True)` loads the image-to-video models (the LLaVA for
HunyuanVideo-I2V); each `generate(..., i2v_image_path="cat.png")` (or `i2v_image=` a PIL image) runs what
`--i2v-mode --i2v-image-path` runs, with the same defaults (size bucket, flow shift 17 or 7 with stability).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from hyvideo import hv15, i2v, pipeline, sidecar
from hyvideo.checkpoints.layout import ModelPaths, locate
from hyvideo.errors import UsageError
from hyvideo.flags import build_parser
from hyvideo.image import SourceImage, load_image, to_rgb
from hyvideo.modules.llava_encoder import I2VTextEncoders
from hyvideo.modules.qwen_encoder import Text15Encoder
from hyvideo.modules.siglip_encoder import VisionEncoder15
from hyvideo.modules.text_encoders import TextEmbeddings, TextEncoders
from hyvideo.modules.vae import HYVideoVAE
from hyvideo.modules.vae15 import HYVideo15VAE
from hyvideo.request import SampleRequest, flag_defaults, for_prompt, validate

_PLACEHOLDER_PROMPT = "-"  # validation needs a prompt; each generate() call brings its own
IN_MEMORY_IMAGE = Path("<PIL image>")  # the sidecar's image path for `i2v_image=`; its sha256 is of the RGB pixels


def source_image(image: Image.Image | str | Path) -> SourceImage:
    """An image as the command line takes it: a file through the same checks, or a PIL image made upright (EXIF)
    and 8-bit RGB by the same conversion (`ValueError` with the message otherwise)."""
    try:
        if not isinstance(image, Image.Image):
            return load_image(image, flag="i2v_image_path")
        rgb = to_rgb(ImageOps.exif_transpose(image), "i2v_image", flag="i2v_image")
    except UsageError as e:
        raise ValueError(str(e)) from None
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    return SourceImage(rgb, IN_MEMORY_IMAGE, digest)


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
        req = self.request if fps is None else self.request.replace(fps=fps)
        record = {**self.record, "fps": req.fps}
        return pipeline.write_video(req, path, self.latents, self.frames * 2 - 1, record)


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
        i2v_mode: bool = False,
        i2v_condition_type: str | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        values: dict[str, Any] = dict(
            model_base=str(model_base),
            precision=precision,
            vae_precision=vae_precision,
            text_encoder_precision=text_encoder_precision,
            text_encoder_precision_2=text_encoder_precision,
        )
        if device:
            values["device"] = device
        if dit_weight:
            values["dit_weight"] = str(dit_weight)
        if loras:  # --lora's PATH[:SCALE] form, read by the same check
            values["lora"] = [f"{x[0]}:{x[1]}" if isinstance(x, tuple) else str(x) for x in loras]
        if i2v_mode:  # the images come with each generate() call
            values.update(i2v_mode=True, i2v_condition_type=i2v_condition_type)
        if flags:  # other command-line flags, given as such; like later flags on a command line, they win
            try:
                parsed = vars(build_parser().parse_args(list(flags)))
            except UsageError as e:
                raise ValueError(str(e)) from None
            values.update({k: v for k, v in parsed.items() if v != flag_defaults()[k]})
        self._init(values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Generator:
        """From a Namespace of the command-line parser (e.g. `hyvideo.config.parse_args()`)."""
        self = cls.__new__(cls)
        self._init(vars(args))
        return self

    def _init(self, values: Mapping[str, Any]) -> None:
        self.flags = {**flag_defaults(), **values, "prompt_file": None}
        if not (self.flags.get("prompt") or "").strip():
            self.flags["prompt"] = _PLACEHOLDER_PROMPT
        try:
            self.request = validate(self.flags, image_later=True)
        except UsageError as e:
            raise ValueError(str(e)) from None
        req = self.request
        self.device = torch.device(req.device)
        cfg = None
        self.text15: Text15Encoder | None = None  # HunyuanVideo 1.5: Qwen2.5-VL + byT5
        self._vision: VisionEncoder15 | None = None  # 1.5 image-to-video: SigLIP, loaded at the first image
        try:  # the components and the DiT config, checked before anything loads (bad input: ValueError)
            if req.hv15 is not None:
                self.paths = hv15.paths_of(req)  # type: ignore[assignment]  # the fields the shared steps read
                cfg = hv15.denoiser_config(req)
            elif req.i2v_mode:  # the components a --i2v-mode run finds
                self.paths: ModelPaths = i2v.model_paths(req)
                cfg = i2v.dit_config(pipeline.denoiser_config(req, self.paths), req)
            else:
                self.paths = locate(req.model_base, req.dit_weight)
        except UsageError as e:
            raise ValueError(str(e)) from None
        self.llava: I2VTextEncoders | None = None
        self.timings = pipeline.Timings({})
        with self.timings.stage("load text encoders", self.device):
            if req.hv15 is not None:
                self.text15 = hv15.load_text(req, self.device)
            elif req.i2v_mode and i2v.uses_llava(req):
                self.llava = I2VTextEncoders(i2v.llava_config(req, self.paths), self.device)
            else:
                self.encoders = TextEncoders(pipeline.text_config(req, self.paths), self.device)
        with self.timings.stage("load DiT", self.device):
            self.model = pipeline.load_denoiser(req, self.paths, self.device, cfg)
        with self.timings.stage("load VAE", self.device):
            self.vae = pipeline.load_decoder(req, self.paths, self.device)
        self._image_vae: HYVideoVAE | HYVideo15VAE | None = None  # the untiled image encoder, loaded at the first image
        self._cache: dict[tuple[str, int], TextEmbeddings] = {}

    def _for_prompt(self, image: SourceImage | None = None, **values: object) -> SampleRequest:
        """The loaded request for one `generate` call: None values keep the construction's."""
        given = {k: v for k, v in values.items() if v is not None}
        try:
            req = for_prompt(self.request, {**self.flags, **given}, image)
            return i2v.resolve(req) if req.i2v_mode and req.hv15 is None else req
        except UsageError as e:
            raise ValueError(str(e)) from None

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
        i2v_image_path: str | Path | None = None,
        i2v_image: Image.Image | None = None,
        i2v_stability: bool | None = None,
        i2v_resize: str | None = None,
        i2v_resolution: str | None = None,
    ) -> list[Video]:
        """Videos for `prompt`; None keeps the value given at construction (or the command-line default: 720x1280,
        129 frames, 50 steps, shift 7, embedded guidance 6, no real CFG). `seed`: video i uses seed + i; a list gives
        each video's seed; None draws one at random. Sizes round up to multiples of 16 as on the command line.
        Image-to-video (`i2v_mode=True` at construction): the first frame from `i2v_image_path` or `i2v_image` (a
        PIL image); without height and width the size is the image's `i2v_resolution` bucket, as on the command
        line."""
        seeds = list(seed) if isinstance(seed, Sequence) else None
        if seeds is not None and not seeds:
            raise ValueError("seed: give at least one seed")
        image = self._image(i2v_image_path, i2v_image)
        size = self.flags["video_size"]
        # without height/width: the size of the construction's flags (v1 text-to-video), or the bucket of the image
        # (image-to-video) or of the version's aspect ratio (HunyuanVideo 1.5), as on the command line
        given = height is not None or width is not None
        sized = given or (not self.request.i2v_mode and self.request.hv15 is None)
        req = self._for_prompt(
            image,
            prompt=prompt,
            video_size=[height or size[0], width or size[1]] if sized else None,
            i2v_stability=i2v_stability,
            i2v_resize=i2v_resize,
            i2v_resolution=i2v_resolution,
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
        if self.text15 is not None:  # HunyuanVideo 1.5
            cond, uncond = hv15.encode_with(self.text15, req)
        elif self.llava is not None:  # HunyuanVideo-I2V: the prompt with its image through the LLaVA
            cond, uncond = i2v.encode_with(self.llava, req)
        else:
            cond = self._encode(req.prompt or "", req.video_length)
            uncond = self._encode(req.neg_prompt, req.video_length) if req.cfg_scale > 1 and req.neg_prompt else None
        starts: dict[int, i2v.ImageStart | hv15.Condition15] = {}
        if req.i2v_mode and req.hv15 is not None:
            if self._image_vae is None:
                self._image_vae, self._vision = hv15.load_encoder(req, self.device), hv15.load_vision(req, self.device)
            condition = hv15.encode_image(req, self.device, self._image_vae, self._vision)
            starts = {int(s): condition for s in seeds}
        elif req.i2v_mode:
            if self._image_vae is None:
                self._image_vae = i2v.load_encoder(req, self.paths, self.device)
            starts = i2v.encode_image(req, self.paths, self.device, [int(s) for s in seeds], self._image_vae)
        videos = []
        for s in seeds:
            timings = pipeline.Timings({})
            latents, video = pipeline.generate_one(
                self.model, self.vae, cond, uncond, req, int(s), self.device, timings, starts.get(int(s))
            )
            one = req.replace(seed=int(s), num_videos=1)
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

    def _image(self, path: str | Path | None, image: Image.Image | None) -> SourceImage | None:
        """The call's first frame (checked as --i2v-image-path is); only with `i2v_mode=True`."""
        given = [name for name, v in (("i2v_image_path", path), ("i2v_image", image)) if v is not None]
        if not self.request.i2v_mode:
            if given:
                raise ValueError(f"{given[0]}: needs Generator(..., i2v_mode=True) (image-to-video weights)")
            return None
        if len(given) != 1:
            raise ValueError("image-to-video: give exactly one of i2v_image_path and i2v_image")
        return source_image(image if image is not None else path)  # type: ignore[arg-type]

    def close(self) -> None:
        """Free the models (the object cannot generate afterwards)."""
        (self.text15 or self.llava or self.encoders).free()
        if self._vision is not None:
            self._vision.free()
        self.model = self.vae = self._image_vae = self._vision = None  # type: ignore[assignment]
        pipeline.release_memory()
