"""MP4 writing (round trip, atomicity), latents files and output names."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from safetensors import safe_open

from hyvideo import io as hio
from hyvideo.io import (
    latents_filename,
    load_latents,
    output_dir_problem,
    save_latents,
    save_latents_fallback,
    slugify,
    video_filename,
    write_mp4,
)


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


# --- output folder check and keeping the latents when the video cannot be written -------------------------------


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_output_dir_problem_finds_what_root_cannot_bypass(tmp_path):
    """Permission bits do not stop root; these do: a regular file where a folder is needed, /proc, an over-long
    name. The check says which path is wrong and leaves nothing behind."""
    (tmp_path / "file").write_text("x")
    before = _tree(tmp_path)
    cases = {
        tmp_path / "file" / "out": f"{tmp_path / 'file'} exists and is not a folder",
        tmp_path / "file": f"{tmp_path / 'file'} exists and is not a folder",
        Path("/proc/x"): "cannot create the folder /proc/x: ",
        Path("/proc/x/y/z"): "cannot create the folder /proc/x: ",
        tmp_path
        / "new"
        / ("a" * 300): f"cannot create the folder {tmp_path / 'new' / ('a' * 300)}: File name too long",
    }
    for path, reason in cases.items():
        got = output_dir_problem(path)
        assert got is not None and got.startswith(reason), (path, got)
        assert "\n" not in got
    assert _tree(tmp_path) == before  # "new" was created for the check, then removed


def test_output_dir_problem_accepts_writable_folders_and_leaves_nothing(tmp_path):
    (tmp_path / "have").mkdir()
    (tmp_path / "have" / "old.mp4").write_text("x")
    before = _tree(tmp_path)
    assert output_dir_problem(tmp_path / "have") is None
    assert output_dir_problem(tmp_path / "a" / "b" / "c") is None
    assert _tree(tmp_path) == before


def test_output_dir_problem_checks_at_once_do_not_disturb_each_other(tmp_path):
    """torchrun ranks check the same new folder at the same moment: every check passes and nothing is left (a check
    that created and removed the real folders failed 277 of 800 such checks and left folders behind)."""
    results: list[str | None] = []
    for r in range(30):
        target = tmp_path / f"r{r}" / "a" / "b"
        barrier = threading.Barrier(4)

        def check(target: Path = target, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            results.append(output_dir_problem(target))

        threads = [threading.Thread(target=check) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [None] * 120
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses permission bits (the mount test covers root)")
def test_output_dir_problem_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert output_dir_problem(ro) == f"cannot write files in {ro}: Permission denied"
        assert output_dir_problem(ro / "sub") == f"cannot create the folder {ro / 'sub'}: Permission denied"
    finally:
        ro.chmod(0o755)


_IN_NAMESPACE = """
import json, os, sys, torch
from pathlib import Path
from hyvideo.io import load_latents, output_dir_problem, save_latents_fallback
root = Path(sys.argv[1])
latents = torch.randn(1, 16, 9, 32, 32)  # 590 KB: more than the 64 KB disk holds
kept = save_latents_fallback(latents, root / "full" / "x.latents.safetensors", {"seed": 3})
print(json.dumps({
    "ro": output_dir_problem(root / "ro"),
    "ro_sub": output_dir_problem(root / "ro" / "out"),
    "kept": str(kept),
    "same": torch.equal(load_latents(kept)[0], latents),
    "full_left": sorted(os.listdir(root / "full")),
}))
"""


def test_read_only_mount_and_full_disk_in_a_private_mount_namespace(tmp_path):
    """Real kernel errors root cannot bypass: a read-only tmpfs (EROFS) and a 64 KB tmpfs that fills up (ENOSPC),
    mounted in a private mount namespace (`unshare -m`) so nothing outside the test sees them."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    for d in ("ro", "full", "tmp"):
        (tmp_path / d).mkdir()
    script = (
        f"mount -t tmpfs -o ro,size=64k tmpfs {tmp_path / 'ro'} && mount -t tmpfs -o size=64k tmpfs {tmp_path / 'full'}"
        f' || exit 77; exec {sys.executable} -c "$0" {tmp_path}'
    )
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    run = subprocess.run(["unshare", "-m", "sh", "-c", script, _IN_NAMESPACE], capture_output=True, text=True, env=env)
    if run.returncode == 77 or run.stderr.startswith("unshare:"):  # no namespace or no mount allowed here
        pytest.skip(f"cannot mount in a private namespace here: {run.stderr.strip()[-200:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["ro"] == f"cannot write files in {tmp_path / 'ro'}: Read-only file system"
    assert got["ro_sub"] == f"cannot create the folder {tmp_path / 'ro' / 'out'}: Read-only file system"
    assert got["kept"] == str(tmp_path / "tmp" / "x.latents.safetensors")  # the disk was full: the temp folder
    assert got["same"] and got["full_left"] == []  # no partial file on the full disk


def test_latents_fallback_order(tmp_path, monkeypatch):
    latents = torch.randn(1, 16, 2, 3, 4)
    out, tmp, home = tmp_path / "out", tmp_path / "tmp", tmp_path / "home"
    for d in (out, tmp, home):
        d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("HOME", str(home))
    name = "2026-01-01-00-00-00_seed7_a_cat.latents.safetensors"

    kept = save_latents_fallback(latents, out / name, {"seed": 7})  # the output folder still works
    assert kept == out / name and torch.equal(load_latents(kept)[0], latents)
    assert load_latents(kept)[1] == {"seed": "7"}
    kept.unlink()

    shutil.rmtree(out)  # removed while sampling: not re-created, the temp folder takes it
    assert save_latents_fallback(latents, out / name) == tmp / name and not out.exists()

    real_save = hio.save_latents

    def full_disk(t, path, meta=None):  # the output and temp folders are on a full disk
        if Path(path).parent != home:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(t, path, meta)

    out.mkdir()
    monkeypatch.setattr(hio, "save_latents", full_disk)
    kept = save_latents_fallback(latents, out / name)
    assert kept == home / name and torch.equal(load_latents(kept)[0], latents)

    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))
    with pytest.raises(OSError, match="cannot keep the latents anywhere") as e:
        save_latents_fallback(latents, out / name)
    assert f"{out}: No space left on device" in str(e.value) and f"{tmp}: No space left" in str(e.value)
    assert f"{tmp_path / 'no-home'}: not a folder" in str(e.value)
