"""MP4 writing (round trip, atomicity), latents files and output names."""

from __future__ import annotations

import re
from datetime import datetime

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from safetensors import safe_open

from hyvideo import io as hio
from hyvideo.io import latents_filename, load_latents, save_latents, slugify, video_filename, write_mp4


def smooth_video(frames: int = 9, height: int = 32, width: int = 48) -> torch.Tensor:
    """(3, T, H, W) in [0, 1]: gentle gradients, which H.264 keeps well."""
    t = torch.linspace(0.2, 0.8, frames).view(-1, 1, 1).expand(frames, height, width)
    y = torch.linspace(0.1, 0.9, height).view(1, -1, 1).expand(frames, height, width)
    x = torch.linspace(0.3, 0.7, width).view(1, 1, -1).expand(frames, height, width)
    return torch.stack([t, y, x])


def read_back(path):
    reader = imageio.get_reader(path)
    meta = reader.get_meta_data()
    frames = np.stack(list(reader.iter_data()))  # list(reader) trips on its infinite len()
    reader.close()
    return frames, meta


@pytest.mark.parametrize("layout", ["channels_first", "channels_last", "signed"])
def test_mp4_round_trip(tmp_path, layout):
    video = smooth_video()
    expect = video.permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
    if layout == "channels_first":
        path = write_mp4(video, tmp_path / "v.mp4")
    elif layout == "channels_last":
        path = write_mp4(video.permute(1, 2, 3, 0).numpy(), tmp_path / "v.mp4", fps=12)
    else:
        path = write_mp4(video * 2 - 1, tmp_path / "v.mp4", signed=True)
    frames, meta = read_back(path)
    assert frames.shape == (9, 32, 48, 3)
    assert meta["fps"] == (12 if layout == "channels_last" else 24)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    err = np.abs(frames / 255.0 - expect)
    assert err.mean() < 0.02 and err.max() < 0.1
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_mp4_interrupted_leaves_nothing(tmp_path, monkeypatch):
    real = imageio.get_writer

    def failing_writer(*args, **kwargs):
        writer = real(*args, **kwargs)
        append, count = writer.append_data, [0]

        def append_data(frame):
            count[0] += 1
            if count[0] == 4:
                raise KeyboardInterrupt
            append(frame)

        writer.append_data = append_data
        return writer

    monkeypatch.setattr(hio.imageio, "get_writer", failing_writer)
    with pytest.raises(KeyboardInterrupt):
        write_mp4(smooth_video(), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []
    # An existing file is left untouched by a failed overwrite.
    monkeypatch.setattr(hio.imageio, "get_writer", real)
    write_mp4(smooth_video(), tmp_path / "v.mp4")
    before = (tmp_path / "v.mp4").read_bytes()
    monkeypatch.setattr(hio.imageio, "get_writer", failing_writer)
    with pytest.raises(KeyboardInterrupt):
        write_mp4(smooth_video(frames=5), tmp_path / "v.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    assert (tmp_path / "v.mp4").read_bytes() == before


def test_mp4_refuses_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(smooth_video(height=31), tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="ambiguous"):
        write_mp4(torch.zeros(3, 3, 16, 3), tmp_path / "v.mp4")
    with pytest.raises(ValueError):
        write_mp4(torch.zeros(4, 16, 16), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


def test_latents_round_trip(tmp_path):
    latents = torch.randn(1, 16, 3, 4, 6, dtype=torch.bfloat16)
    path = save_latents(latents, tmp_path / "x.latents.safetensors", {"seed": 7, "prompt": "a cat"})
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["latents"] and f.get_tensor("latents").dtype == torch.float32
    back, meta = load_latents(path)
    assert back.dtype == torch.float32 and torch.equal(back, latents.float())
    assert meta == {"seed": "7", "prompt": "a cat"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.latents.safetensors"]


def test_video_filename_rules(tmp_path):
    when = datetime(2024, 12, 3, 14, 5, 9)
    name = video_filename(tmp_path, 42, "A cat walks on the grass, realistic", when)
    assert name == tmp_path / "2024-12-03-14-05-09_seed42_A_cat_walks_on_the_grass,_realistic.mp4"
    assert re.fullmatch(r"\d{4}(-\d\d){5}_seed\d+_.+\.mp4", video_filename(tmp_path, 1, "x").name)
    assert video_filename(tmp_path, 1, "x", when, suffix="v2").name.endswith("_x_v2.mp4")
    assert latents_filename(name).name == name.stem + ".latents.safetensors"


@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ('a/b\\c:d*e?f"g<h>i|j\x00k\nl', "a_b_c_d_e_f_g_h_i_j_k_l"),
        ("東京の猫 café", "東京の猫_café"),
        ("   ", "video"),
        ("...", "video"),
        ("🙂🙂", "video"),
    ],
)
def test_slug_cases(prompt, slug):
    assert slugify(prompt) == slug


def test_slug_limits(tmp_path):
    long = slugify("word " * 100)
    assert len(long) <= 100 and not long.endswith("_")
    cjk = slugify("猫" * 120)
    assert len(cjk) <= 100 and len(cjk.encode()) <= 150
    path = video_filename(tmp_path, 2**31, "猫 " * 300)
    assert "/" not in path.name and len(path.name.encode()) < 255
    path.write_bytes(b"")  # the filesystem accepts it
