"""The conditioning image of image-to-video: load it safely, choose the video size, resize and crop (docs/DESIGN.md §14).

`load_image(path)` refuses every bad file with a one-line UsageError before anything expensive loads, and returns
the whole image as 8-bit RGB with its EXIF orientation applied. `prepare_image` turns it into the pixels the VAE
encodes, (1, 3, 1, H, W) in [-1, 1], keeping the whole (uncropped) image beside them for the LLaVA's own processor.

Sizes, three ways:
- no explicit size: the official buckets of `--i2v-resolution` (about base x base pixels in steps of 32); the shorter
  side is resized (bilinear) to the bucket's shorter side, then the center is cropped to the bucket;
- an explicit size with `crop`: the smallest aspect-keeping resize that covers it, then the same center crop;
- `stretch`: a direct LANCZOS resize to height x width, aspect not kept (what diffusers' I2V pipelines do).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from loguru import logger
from PIL import Image, ImageOps, UnidentifiedImageError

from hyvideo.errors import UsageError

IMAGE_FLAG = "--i2v-image-path"
# Refused from the header, before any pixel is decoded: 8192 x 8192 = 67,108,864 pixels (~200 MB as 8-bit RGB).
# It sits below Pillow's own decompression-bomb warning (89,478,485), so our message is the one users see.
MAX_IMAGE_PIXELS = 8192 * 8192
# Longer side / shorter side. The official resize scales the shorter side to the bucket's, so a 1 x 60000 strip
# would become 480 x 28,800,000 pixels before the crop; the buckets themselves stop at 4:1.
MAX_ASPECT = 16
I2V_BUCKET_BASE = {"720p": 960, "540p": 720, "360p": 480}  # --i2v-resolution -> side of the square bucket
BUCKET_STRIDE = 32  # bucket sides are multiples of this
BUCKET_MAX_RATIO = 4.0  # longest bucket side / shortest
RESIZE_MODES = ("crop", "stretch")  # --i2v-resize
_HASH_CHUNK = 1 << 20
_ORIENTATION = 0x0112  # the EXIF orientation tag; 1 = upright, 2..8 = mirrored and/or rotated


@dataclass(frozen=True)
class SourceImage:
    """A decoded conditioning image file."""

    image: Image.Image  # whole image, mode RGB, EXIF orientation applied
    path: Path
    sha256: str  # hex digest of the file's bytes, for the sidecar


@dataclass(frozen=True)
class ConditionImage:
    """What image-to-video needs from the image."""

    pixels: torch.Tensor  # (1, 3, 1, H, W) float32 in [-1, 1]: the frame the VAE encodes
    whole: Image.Image  # the whole RGB image before any resize or crop: what the LLaVA's image processor sees

    @property
    def height(self) -> int:
        return self.pixels.shape[-2]

    @property
    def width(self) -> int:
        return self.pixels.shape[-1]


# --- loading --------------------------------------------------------------------------------------------------------


def load_image(path: str | Path, flag: str = IMAGE_FLAG) -> SourceImage:
    """Open, check and decode an image file. Every problem is a UsageError naming `flag` and the file."""
    p = Path(path)
    if not p.exists():
        raise UsageError(flag, f"{p}: no such file")
    if p.is_dir():
        raise UsageError(flag, f"{p} is a directory; give an image file (PNG, JPEG, WebP, ...)")
    try:
        f = open(p, "rb")  # noqa: SIM115 - kept open across decode and hashing, closed below
    except OSError as e:
        raise UsageError(flag, f"{p}: cannot read it ({e.strerror or e})") from None
    with f:
        image = _decode(f, p, flag)
        f.seek(0)
        digest = hashlib.sha256()
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return SourceImage(to_rgb(image, str(p), flag), p, digest.hexdigest())


def _decode(f: BinaryIO, p: Path, flag: str) -> Image.Image:
    """Header first (size limits), then the pixels, then the EXIF orientation."""
    with warnings.catch_warnings():
        # Pillow warns above its own limit and raises above twice that; both become our one-line refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(f)
        except UnidentifiedImageError:
            raise UsageError(flag, f"{p}: not an image file Pillow can read (PNG, JPEG, WebP, ...)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UsageError(flag, f"{p}: refused, too many pixels ({e})") from None
        except Exception as e:  # a corrupt header: Pillow raises many types (SyntaxError, struct.error, ...)
            raise UsageError(flag, f"{p}: cannot read the image header ({type(e).__name__}: {e})") from None
    w, h = image.size
    if w * h > MAX_IMAGE_PIXELS:
        raise UsageError(
            flag, f"{p}: {w}x{h} is {w * h:,} pixels, more than the {MAX_IMAGE_PIXELS:,} accepted; downscale it first"
        )
    if w < 1 or h < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        raise UsageError(flag, f"{p}: {w}x{h} has an aspect ratio beyond 1:{MAX_ASPECT}; crop it first")
    try:
        image.load()  # truncated or corrupt data fails here (Pillow's default: truncated images are errors)
        orientation = image.getexif().get(_ORIENTATION, 1)
        upright = ImageOps.exif_transpose(image)
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, ... on bad data
        raise UsageError(flag, f"{p}: cannot decode it, truncated or corrupt ({type(e).__name__}: {e})") from None
    if orientation not in (1, None):
        logger.info(f"{p}: applied its EXIF orientation {orientation} (now {upright.width}x{upright.height})")
    if getattr(image, "n_frames", 1) > 1:  # animated GIF / APNG / WebP, multi-page TIFF
        logger.info(f"{p}: has {image.n_frames} frames; using the first")
    return upright


def to_rgb(image: Image.Image, name: str = "image", flag: str = IMAGE_FLAG) -> Image.Image:
    """8-bit RGB, saying what was converted. Alpha is dropped, not composited: the colour stored under transparent
    pixels is kept, which is what the official `Image.open(path).convert("RGB")` gives. 16-bit grayscale keeps its
    high byte (Pillow's own convert would clip every value above 255 to white)."""
    if image.mode == "RGB":
        return image
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit grayscale PNG / TIFF
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8  # (H, W) in 0..255
        rgb = Image.fromarray(values.astype(np.uint8)).convert("RGB")
        logger.info(f"{name}: 16-bit grayscale ({mode}) converted to 8-bit RGB")
        return rgb
    if mode == "F":
        raise UsageError(flag, f"{name}: floating-point image (mode F) has no defined range; save it as 8 or 16 bit")
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    try:
        rgb = image.convert("RGB")
    except ValueError as e:  # a mode Pillow cannot convert (LAB, ...)
        raise UsageError(flag, f"{name}: cannot convert a {mode} image to RGB ({e})") from None
    note = ", alpha dropped (transparent pixels keep their stored colour, as in the official code)" if has_alpha else ""
    logger.info(f"{name}: {mode} image converted to RGB{note}")
    return rgb


# --- sizes ----------------------------------------------------------------------------------------------------------


def bucket_sizes(base: int, stride: int = BUCKET_STRIDE, max_ratio: float = BUCKET_MAX_RATIO) -> list[tuple[int, int]]:
    """The official I2V buckets as (height, width): every n = round((base/stride)^2) cell budget split into
    a x b cells with a*b <= n along the staircase from (n, 1) down to (1, n), aspect within 1:max_ratio.

    The order is the official one (tallest first); it matters, since ties go to the earlier bucket."""
    n = round((base / stride) ** 2)
    sizes = []
    for a in range(n, 0, -1):  # height in cells; the width steps up from where the taller row stopped
        for b in range(max(1, n // (a + 1)), n // a + 1):
            if max(a, b) / min(a, b) <= max_ratio:
                sizes.append((a * stride, b * stride))
    return sizes


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The official choice: bucket ratios h/w rounded to 5 decimals; a portrait or square image takes the nearest
    bucket that is not taller than it (ratio <= its own), a landscape image the nearest that is strictly taller
    (ratio > its own), so the shorter-side resize always covers the bucket. No two buckets share a ratio, so there
    is never a tie."""
    ratio = height / width
    best, best_gap = None, math.inf
    for h, w in buckets:
        diff = round(h / w, 5) - ratio
        if (diff <= 0 if ratio >= 1 else diff > 0) and abs(diff) < best_gap:
            best, best_gap = (h, w), abs(diff)
    assert best is not None, (height, width)  # a square bucket always qualifies on both sides
    return best


def i2v_bucket(resolution: str, height: int, width: int) -> tuple[int, int]:
    """(height, width) of the video for an image of height x width at `--i2v-resolution`."""
    if resolution not in I2V_BUCKET_BASE:
        raise UsageError("--i2v-resolution", f"{resolution!r} is not one of {', '.join(I2V_BUCKET_BASE)}")
    return nearest_bucket(height, width, bucket_sizes(I2V_BUCKET_BASE[resolution]))


# --- resizing -------------------------------------------------------------------------------------------------------


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bilinear resize with the shorter side to `size`, the longer one scaled and truncated to an integer (the
    arithmetic of torchvision's Resize(int), which the official code uses)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """The centered height x width window; offsets round half to even (Python's round, as torchvision's CenterCrop).
    A side shorter than the window is first padded with black, split as torchvision does."""
    w, h = image.size
    if width > w or height > h:
        left, top = max(0, (width - w) // 2), max(0, (height - h) // 2)
        padded = Image.new("RGB", (w + max(0, width - w), h + max(0, height - h)))  # black
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
    top, left = round((h - height) / 2), round((w - width) / 2)  # round() of a float gives an int
    return image.crop((left, top, left + width, top + height))


def cover_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Aspect-keeping resize to the smallest size covering height x width, then the center crop."""
    w, h = image.size
    if w <= h:  # the shorter side is the width: it must reach `width`, and the scaled height `height`
        short = max(width, -(-height * w // h))
    else:
        short = max(height, -(-width * h // w))
    return center_crop(resize_shorter_side(image, short), height, width)


def stretch(image: Image.Image, height: int, width: int) -> Image.Image:
    """LANCZOS straight to width x height, the aspect not kept (diffusers' VaeImageProcessor default resample)."""
    return image.resize((width, height), Image.Resampling.LANCZOS)


def to_pixels(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, 1, H, W) float32 in [-1, 1]: x/255 then (x - 0.5)/0.5, computed as 2x - 1 (the same
    floats: scaling by 2 is exact)."""
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(x * 2.0 - 1.0).permute(2, 0, 1)[None, :, None].contiguous()


def prepare_image(
    image: Image.Image,
    *,
    resolution: str = "720p",
    size: tuple[int, int] | None = None,
    resize: str = "crop",
) -> ConditionImage:
    """The VAE's frame and the LLaVA's whole image. size = (height, width) from `--video-size`, or None for the
    `--i2v-resolution` bucket; resize = `crop` (keep the aspect, center crop) or `stretch`."""
    if resize not in RESIZE_MODES:
        raise UsageError("--i2v-resize", f"{resize!r} is not one of {', '.join(RESIZE_MODES)}")
    image = to_rgb(image)
    if size is None:
        height, width = i2v_bucket(resolution, image.height, image.width)
        if resize == "crop":  # exactly the official transform: the shorter side first, then the crop
            frame = center_crop(resize_shorter_side(image, min(height, width)), height, width)
        else:
            frame = stretch(image, height, width)
    else:
        height, width = size
        if height < 1 or width < 1:
            raise UsageError("--video-size", f"{height}x{width}: both sides must be positive")
        frame = cover_crop(image, height, width) if resize == "crop" else stretch(image, height, width)
    logger.info(f"image {image.width}x{image.height} -> {width}x{height} ({resize})")
    return ConditionImage(to_pixels(frame), image)
