"""The conditioning image: safe loading (every bad file a one-line UsageError), conversions to RGB, EXIF orientation,
the official buckets and crop, the explicit-size crop, and `stretch` against diffusers' own preprocessing."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.video_processor import VideoProcessor
from loguru import logger
from PIL import Image, ImageFile

from hyvideo.image import (
    I2V_BUCKET_BASE,
    MAX_ASPECT,
    MAX_IMAGE_PIXELS,
    bucket_sizes,
    center_crop,
    i2v_bucket,
    load_image,
    nearest_bucket,
    prepare_image,
    to_rgb,
)
from hyvideo.request import UsageError

FLAG = "--i2v-image-path"


@pytest.fixture
def logs():
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO")
    yield messages
    logger.remove(sink)


def rgb_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: resampling differences show, and no two pixels are alike."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
    return np.clip(base + g.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand: what Pillow cannot write (48-bit RGB) or a header that lies about the size."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0")
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(UsageError) as e:
        load_image(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{FLAG}: "), text
    assert str(path) in text, text
    for fragment in fragments:
        assert fragment in text, text
    return text


# --- bad files ------------------------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "nope.png", "no such file")
    refused(tmp_path, "is a directory")


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    Image.fromarray(rgb_array(8, 8)).save(p)
    if os.name == "posix" and os.geteuid() != 0:
        p.chmod(0)
        try:
            refused(p, "cannot read it", "ermission")
        finally:
            p.chmod(0o600)

    def denied(*args, **kwargs):  # what open() raises on a file without read permission (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr("hyvideo.image.open", denied, raising=False)
    refused(p, "cannot read it (Permission denied)")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is a text file with an image name\n")
    refused(p, "not an image file")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    refused(empty, "not an image file")


def test_truncated_png_and_jpeg(tmp_path):
    for ext in ("png", "jpg"):
        whole = io.BytesIO()
        Image.fromarray(rgb_array(64, 64)).save(whole, format="PNG" if ext == "png" else "JPEG")
        p = tmp_path / f"cut.{ext}"
        p.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
        refused(p, "truncated or corrupt")
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # the check relies on Pillow's default


def test_huge_header_refused_before_decoding(tmp_path, monkeypatch):
    def no_decode(self, *args, **kwargs):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # just above our limit, below Pillow's own warning
    assert side * side < Image.MAX_IMAGE_PIXELS
    p = tmp_path / "big.png"
    p.write_bytes(raw_png(side, side, 8, 2, None))
    refused(p, f"{side}x{side}", f"{MAX_IMAGE_PIXELS:,}")
    # far above Pillow's limits (it raises in Image.open): still our one line
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(raw_png(100_000, 100_000, 8, 2, None))
    refused(bomb, "too many pixels")
    # between Pillow's warning and its error (a warning by default): refused too, not a warning and a decode
    mid = tmp_path / "mid.png"
    mid.write_bytes(raw_png(10_000, 10_000, 8, 2, None))
    refused(mid)
    # and when another library switched Pillow's check off, ours still holds
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    refused(bomb, "100000x100000", "downscale")


def test_extreme_aspect_refused(tmp_path):
    p = tmp_path / "strip.png"
    Image.fromarray(rgb_array(2, 2 * MAX_ASPECT + 2)).save(p)
    refused(p, "aspect ratio")
    ok = tmp_path / "ok.png"
    Image.fromarray(rgb_array(2, 2 * MAX_ASPECT)).save(ok)
    assert load_image(ok).image.size == (2 * MAX_ASPECT, 2)


# --- conversions ----------------------------------------------------------------------------------------------------


def test_rgb_loads_unchanged_with_its_hash(tmp_path, logs):
    a = rgb_array(20, 30)
    p = tmp_path / "plain.png"
    Image.fromarray(a).save(p)
    src = load_image(p)
    assert src.image.mode == "RGB" and np.array_equal(np.asarray(src.image), a)
    assert src.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and src.path == p
    assert not [m for m in logs if "converted" in m]


def test_grayscale_palette_rgba_converted_with_a_log_line(tmp_path, logs):
    a = rgb_array(16, 24)
    gray = tmp_path / "gray.png"
    Image.fromarray(a[..., 0]).save(gray)
    out = np.asarray(load_image(gray).image)
    assert all(np.array_equal(out[..., c], a[..., 0]) for c in range(3))

    pal = tmp_path / "pal.png"
    p_img = Image.fromarray(a).quantize(colors=16)
    p_img.save(pal)
    palette = np.array(p_img.getpalette()[: 3 * 16], dtype=np.uint8).reshape(16, 3)
    assert np.array_equal(np.asarray(load_image(pal).image), palette[np.asarray(p_img)])

    rgba = tmp_path / "rgba.png"
    alpha = np.zeros((16, 24), np.uint8)
    alpha[:, 12:] = 255
    Image.fromarray(np.dstack([a, alpha])).save(rgba)
    out = np.asarray(load_image(rgba).image)
    assert np.array_equal(out, a)  # alpha dropped: fully transparent pixels keep their stored colour (official)

    text = " ".join(logs)
    for name, mode in ((gray, "L"), (pal, "P"), (rgba, "RGBA")):
        assert f"{name}: {mode} image converted to RGB" in text, text
    assert "alpha dropped" in text


def test_sixteen_bit_png_keeps_the_high_byte(tmp_path, logs):
    g = np.random.default_rng(1)
    gray16 = g.integers(0, 65536, (12, 10), dtype=np.uint16)
    p = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(p)
    assert Image.open(p).mode.startswith("I;16")
    out = np.asarray(load_image(p).image)
    assert np.array_equal(out[..., 1], (gray16 >> 8).astype(np.uint8))  # Pillow's convert would clip to 255
    assert "16-bit grayscale" in " ".join(logs)

    rgb16 = g.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    p48 = tmp_path / "rgb48.png"
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)  # filter byte 0 then big-endian samples
    p48.write_bytes(raw_png(10, 12, 16, 2, rows))
    assert np.array_equal(np.asarray(load_image(p48).image), (rgb16 >> 8).astype(np.uint8))


def test_cmyk_jpeg_converted(tmp_path, logs):
    a = rgb_array(32, 32)
    cmyk = Image.fromarray(a).convert("CMYK")
    p = tmp_path / "print.jpg"
    cmyk.save(p, quality=100)
    out = load_image(p).image
    assert out.mode == "RGB" and out.size == (32, 32)
    assert np.array_equal(np.asarray(out), np.asarray(Image.open(p).convert("RGB")))
    assert np.abs(np.asarray(out).astype(int) - a).mean() < 4  # a q100 JPEG of the same picture
    assert f"{p}: CMYK image converted to RGB" in " ".join(logs)


def test_exif_orientation_applied(tmp_path, logs):
    a = rgb_array(20, 40)
    p = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    Image.fromarray(a).save(p, exif=exif, quality=95)
    stored = np.asarray(Image.open(p).convert("RGB"))  # the decoded pixels, orientation ignored
    out = np.asarray(load_image(p).image)
    assert out.shape == (40, 20, 3)
    assert np.array_equal(out, np.rot90(stored, k=-1))  # clockwise
    assert "EXIF orientation 6" in " ".join(logs)


def test_float_image_refused_and_api_images_converted(tmp_path):
    with pytest.raises(UsageError, match="mode F"):
        to_rgb(Image.new("F", (4, 4)), "x.tif")
    cond = prepare_image(Image.fromarray(np.dstack([rgb_array(64, 64), np.full((64, 64), 9, np.uint8)])), size=(32, 32))
    assert cond.whole.mode == "RGB" and cond.whole.size == (64, 64)


# --- buckets --------------------------------------------------------------------------------------------------------


def staircase(base: int, stride: int = 32, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """The official generator restated as a walk: from n x 1 cells, widen while the area allows, else shorten."""
    n = round((base / stride) ** 2)
    a, b, out = n, 1, []
    while a > 0:
        if max(a, b) / min(a, b) <= max_ratio:
            out.append((a * stride, b * stride))
        if (b + 1) * a <= n:
            b += 1
        else:
            a -= 1
    return out


def nearest_restated(h: int, w: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratios = np.array([round(bh / bw, 5) for bh, bw in buckets])
    gaps = ratios - h / w
    allowed = gaps <= 0 if h / w >= 1 else gaps > 0
    candidates = np.flatnonzero(allowed)
    return buckets[int(candidates[np.argmin(np.abs(gaps[candidates]))])]  # argmin: first of equal gaps


@pytest.mark.parametrize("base", sorted(I2V_BUCKET_BASE.values()))
def test_bucket_list_is_the_official_one(base):
    sizes = bucket_sizes(base)
    assert sizes == staircase(base)
    assert all(h % 32 == 0 and w % 32 == 0 and max(h, w) <= 4 * min(h, w) for h, w in sizes)
    assert len({round(h / w, 5) for h, w in sizes}) == len(sizes)  # distinct ratios: the nearest is never a tie
    assert any(h == w for h, w in sizes)  # a square bucket: no image gets a bucket of the other orientation


def test_bucket_table():
    for res, landscape in (("720p", (704, 1248)), ("540p", (544, 928)), ("360p", (352, 608))):
        assert i2v_bucket(res, 720, 1280) == landscape
        assert i2v_bucket(res, 1080, 1920) == landscape
        assert i2v_bucket(res, 1280, 720) == landscape[::-1]
    assert i2v_bucket("720p", 1000, 1000) == (960, 960)
    assert i2v_bucket("540p", 500, 500) == (704, 704)  # 720 is not a multiple of 32
    with pytest.raises(UsageError, match="--i2v-resolution: '1080p'"):
        i2v_bucket("1080p", 720, 1280)


def test_nearest_bucket_signed_rule_against_a_restatement():
    g = np.random.default_rng(3)
    shapes = [(int(h), int(w)) for h, w in g.integers(16, 4000, (400, 2))]
    shapes += [(h, w) for h, w in bucket_sizes(960)] + [(9, 16), (16, 9), (3, 4), (4, 3), (1, 1), (1, 4), (4, 1)]
    for base in I2V_BUCKET_BASE.values():
        buckets = bucket_sizes(base)
        for h, w in shapes:
            got = nearest_bucket(h, w, buckets)
            assert got == nearest_restated(h, w, buckets), (base, h, w)
            if h >= w:  # portrait or square: a bucket no taller than the image
                assert got[0] * w <= got[1] * h * (1 + 1e-5)
            else:  # landscape: strictly taller, so the shorter-side resize covers it
                assert got[0] * w > got[1] * h * (1 - 1e-5)


# --- resize and crop ------------------------------------------------------------------------------------------------


def official_transform(image: Image.Image, bucket: tuple[int, int]) -> torch.Tensor:
    """Resize(min(bucket)) -> CenterCrop(bucket) -> ToTensor -> Normalize(0.5, 0.5), restated from torchvision's
    documented arithmetic (shorter side to the size, the longer truncated; crop offsets round((in - out) / 2))."""
    bh, bw = bucket
    w, h = image.size
    s = min(bucket)
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    x = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    top, left = round((x.shape[0] - bh) / 2), round((x.shape[1] - bw) / 2)
    x = x[top : top + bh, left : left + bw].astype(np.float32) / 255
    return ((torch.from_numpy(x) - 0.5) / 0.5).permute(2, 0, 1)[None, :, None]


@pytest.mark.parametrize("hw", [(720, 1280), (1280, 720), (600, 800), (1001, 999), (333, 1300), (97, 61)])
def test_bucket_crop_is_the_official_transform(hw):
    image = Image.fromarray(rgb_array(*hw))
    for res in I2V_BUCKET_BASE:
        cond = prepare_image(image, resolution=res)
        bucket = i2v_bucket(res, *hw)
        assert (cond.height, cond.width) == bucket and cond.pixels.dtype == torch.float32
        assert torch.equal(cond.pixels, official_transform(image, bucket)), (hw, res)
        assert cond.whole is image  # the LLaVA sees the whole image, not the crop
    assert cond.pixels.min() >= -1 and cond.pixels.max() <= 1


def test_center_crop_offsets_and_padding():
    a = rgb_array(7, 9)
    img = Image.fromarray(a)
    # offsets round half to even: (7-6)/2 = 0.5 -> 0, (9-6)/2 = 1.5 -> 2
    assert np.array_equal(np.asarray(center_crop(img, 6, 6)), a[0:6, 2:8])
    # a window larger than the image: black padding, the smaller half on the top/left (torchvision's split)
    out = np.asarray(center_crop(img, 10, 12))
    assert out.shape == (10, 12, 3)
    assert np.array_equal(out[1:8, 1:10], a)
    assert not out[0].any() and not out[8:].any() and not out[:, 0].any() and not out[:, 10:].any()


@pytest.mark.parametrize("hw", [(720, 1280), (1280, 720), (500, 500), (333, 1300), (61, 97)])
@pytest.mark.parametrize("size", [(544, 960), (720, 720), (960, 544), (64, 48)])
def test_explicit_size_crop_keeps_the_aspect(hw, size):
    image = Image.fromarray(rgb_array(*hw))
    cond = prepare_image(image, size=size)
    assert (cond.height, cond.width) == size
    assert torch.equal(cond.pixels, cover_reference(image, *size)), (hw, size)


def cover_reference(image: Image.Image, H: int, W: int) -> torch.Tensor:
    """The smallest integer shorter side s whose aspect-kept resize (longer side truncated) covers H x W."""
    w, h = image.size
    for s in range(1, 100_000):
        size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        if size[0] >= W and size[1] >= H:
            break
    x = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    top, left = round((x.shape[0] - H) / 2), round((x.shape[1] - W) / 2)
    x = x[top : top + H, left : left + W].astype(np.float32) / 255
    return (torch.from_numpy(x) * 2 - 1).permute(2, 0, 1)[None, :, None]


def test_file_to_pixels_as_the_release_loads_it(tmp_path, logs):
    """load_image + prepare_image on a JPEG equals the release's Image.open(path).convert("RGB") + its transform."""
    p = tmp_path / "photo.jpg"
    Image.fromarray(rgb_array(480, 640, seed=9)).save(p, quality=90)
    cond = prepare_image(load_image(p).image, resolution="360p")
    release = Image.open(p).convert("RGB")
    assert torch.equal(cond.pixels, official_transform(release, i2v_bucket("360p", 480, 640)))
    assert np.array_equal(np.asarray(cond.whole), np.asarray(release))


def test_animated_image_uses_the_first_frame(tmp_path, logs):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    p = tmp_path / "anim.png"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(p).image).max() == 10
    assert "has 2 frames; using the first" in " ".join(logs)


def test_explicit_size_equal_to_the_bucket_is_the_bucket_crop():
    image = Image.fromarray(rgb_array(1080, 1920))
    bucket = prepare_image(image, resolution="540p")
    explicit = prepare_image(image, size=(bucket.height, bucket.width))
    assert torch.equal(bucket.pixels, explicit.pixels)


@pytest.mark.parametrize("hw", [(720, 1280), (1000, 700), (64, 64)])
@pytest.mark.parametrize("size", [(544, 960), (720, 1280), (48, 80)])
def test_stretch_equals_diffusers_preprocessing(hw, size):
    image = Image.fromarray(rgb_array(*hw, seed=5))
    ours = prepare_image(image, size=size, resize="stretch")
    theirs = VideoProcessor(vae_scale_factor=8).preprocess(image, height=size[0], width=size[1])  # (1, 3, H, W)
    assert torch.equal(ours.pixels[:, :, 0], theirs), (hw, size)
    assert ours.whole is image


def test_stretch_to_the_bucket_and_bad_mode():
    image = Image.fromarray(rgb_array(700, 1300))
    cond = prepare_image(image, resolution="360p", resize="stretch")
    assert (cond.height, cond.width) == i2v_bucket("360p", 700, 1300)
    with pytest.raises(UsageError, match="--i2v-resize: 'fit'"):
        prepare_image(image, resize="fit")
