"""Output files: MP4 videos, latent tensors and their names. Every file is written atomically: to a temporary
name in the destination directory, then `os.replace`d, so a reader never sees a half-written file and an error
(or Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import tempfile
import unicodedata
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

LATENTS_KEY = "latents"
SLUG_MAX_CHARS = 100
SLUG_MAX_BYTES = 150  # UTF-8 bytes, so the whole name stays far below the usual 255-byte limit even for CJK prompts
_SLUG_KEEP = set("-_,.+()'")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); on success it replaces `path`, on any exception
    (KeyboardInterrupt included) it is deleted and the exception propagates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:40]}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; give the result normal permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def as_frames(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """View a (3, T, H, W) or (T, H, W, 3) video (a leading batch dim of 1 is dropped) as (T, H, W, 3), no copy.

    Layout: channels-last if the last dim is 3, else channels-first if the first dim is 3; a shape that fits
    both, e.g. (3, 3, H, 3), is refused rather than guessed.
    """
    x = torch.as_tensor(video).detach()
    if x.ndim == 5 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 4:
        raise ValueError(f"expected a (3, T, H, W) or (T, H, W, 3) video, got shape {tuple(x.shape)}")
    last, first = x.shape[-1] == 3, x.shape[0] == 3
    if last and first:
        raise ValueError(f"ambiguous video layout {tuple(x.shape)}: both (3,T,H,W) and (T,H,W,3) fit")
    if not (last or first):
        raise ValueError(f"video needs 3 channels first or last, got shape {tuple(x.shape)}")
    return x.permute(1, 2, 3, 0) if first else x  # (T, H, W, 3)


def to_uint8(x: torch.Tensor, signed: bool = False) -> np.ndarray:
    """Float pixels in [0, 1] (or [-1, 1] with `signed`: x01 = (x + 1) / 2) -> uint8 = round(255 * clamp(x01))."""
    x = x.float().cpu()
    if signed:
        x = (x + 1) / 2
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()


def write_mp4(
    video: torch.Tensor | np.ndarray, path: str | Path, fps: float = 24, *, signed: bool = False, quality: float = 8
) -> Path:
    """Write an H.264 (libx264, yuv420p) MP4 with imageio-ffmpeg, atomically.

    `video`: (3, T, H, W) or (T, H, W, 3) float, values in [0, 1], or in [-1, 1] (the VAE's output range) with
    `signed=True`; converted one frame at a time, so a 720p clip needs no full-size copies. Frames are written at
    their exact size: yuv420p needs even width and height, so odd sizes raise ValueError (no silent resize or
    padding; imageio's macro-block resizing is turned off). `quality` is imageio's 0-10 scale (10 = best).
    Returns the path.
    """
    frames = as_frames(video)  # (T, H, W, 3) view
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width}")
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=quality,
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        try:
            for frame in frames:
                writer.append_data(to_uint8(frame, signed))  # (H, W, 3) uint8
        finally:
            writer.close()
        check_mp4(tmp, path)
    return path


def check_mp4(path: str | Path, name: str | Path | None = None) -> None:
    """Raise OSError unless `path` is a finished MP4: its top-level boxes tile the file exactly and include ftyp,
    mdat and moov (written last, by the muxer's trailer). imageio does not report ffmpeg's exit status, so a full
    disk or a killed encoder would otherwise leave a truncated file that looks written. `name` is for the message."""
    path = Path(path)
    size, pos, kinds = path.stat().st_size, 0, set()
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            length, kind = struct.unpack(">I4s", f.read(8))  # box header: 32-bit size, 4-char type
            if length == 1:  # 64-bit size follows
                length = struct.unpack(">Q", f.read(8))[0] if pos + 16 <= size else 0
            elif length == 0:  # box runs to the end of the file
                length = size - pos
            if length < 8 or pos + length > size:
                break
            kinds.add(kind)
            pos += length
    if pos != size or not {b"ftyp", b"mdat", b"moov"} <= kinds:
        full = shutil.disk_usage(path.parent).free < 2**24  # < 16 MiB left: say so, callers stop on ENOSPC
        raise OSError(
            errno.ENOSPC if full else errno.EIO,
            f"the video encoder stopped before finishing {name or path} ({size} bytes written; "
            f"{'the disk is full' if full else 'disk full or ffmpeg failed?'}); the incomplete file was removed",
        )


def save_latents(latents: torch.Tensor, path: str | Path, metadata: Mapping[str, object] | None = None) -> Path:
    """Save latents (e.g. (1, C, T, h, w)) as float32 under safetensors key "latents", atomically. Metadata
    values are stored as strings (safetensors allows only str -> str)."""
    tensors = {LATENTS_KEY: latents.detach().to("cpu", torch.float32).contiguous()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=meta)
        except SafetensorError as e:  # its I/O errors (disk full, ...) are not OSErrors and do not name the file
            raise OSError(errno.EIO, f"cannot write {path}: {e}") from None
    return path


def save_latents_fallback(
    latents: torch.Tensor, path: str | Path, metadata: Mapping[str, object] | None = None
) -> Path:
    """Keep computed latents when the normal output could not be written (disk full, folder removed meanwhile), so
    `--decode-latents` can finish the job: `save_latents` to `path` if its folder still exists, else (or if that
    fails) to the same file name in the temp folder, then in the home folder. Returns the path written, for the
    caller to print; raises OSError naming every place tried when none works. Nothing partial is left anywhere."""
    path = Path(path)
    failures: list[str] = []
    if not os.path.isdir(path.parent):
        failures.append(f"{path.parent}: the folder no longer exists")
    places = [path.parent, Path(tempfile.gettempdir()), Path.home()]
    for folder in dict.fromkeys(places):  # in order, each once
        if not os.path.isdir(folder):
            if folder != path.parent:
                failures.append(f"{folder}: not a folder")
            continue
        try:
            return save_latents(latents, folder / path.name, metadata)
        except OSError as e:
            failures.append(f"{folder}: {e.strerror or e}")
    raise OSError(errno.EIO, f"cannot keep the latents anywhere ({'; '.join(failures)})")


def output_dir_problem(path: str | Path) -> str | None:
    """Why files cannot be written into folder `path` (one line), or None if they can. Cheap, meant to run before
    anything loads. It writes rather than reads permission bits, which also catches what root cannot bypass (a
    read-only mount, /proc or /sys, a regular file where a folder should be, an over-long name): an empty file in
    `path` if it exists, else the missing folders rebuilt inside a private scratch folder in the deepest existing
    one. The scratch folder is removed, the real folders are never created: nothing is left behind, and processes
    checking the same path at once (torchrun ranks) cannot disturb one another."""
    path = Path(path)
    chain = [p for p in (*reversed(path.parents), path) if str(p) not in ("", ".")]  # outermost first
    for p in chain:  # a regular file (or a device, ...) where a folder is needed
        if os.path.lexists(p) and not os.path.isdir(p):
            return f"{p} exists and is not a folder"
    missing = [p for p in chain if not os.path.isdir(p)]  # os.path: False, not an exception, for an over-long name
    if not missing:
        return _probe_file(path, path)
    try:
        scratch = Path(tempfile.mkdtemp(dir=missing[0].parent, prefix=".hyvideo-write-check."))
    except OSError as e:
        return f"cannot create the folder {missing[0]}: {e.strerror or e}"
    try:
        folder = scratch
        for p in missing:  # the same names, so an over-long one fails here as it would in the run
            folder = folder / p.name
            try:
                folder.mkdir()
            except OSError as e:
                return f"cannot create the folder {p}: {e.strerror or e}"
        return _probe_file(folder, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _probe_file(folder: Path, shown: Path) -> str | None:
    """Create and delete an empty file in `folder`; the reason it failed, naming `shown`, or None."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hyvideo-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write files in {shown}: {e.strerror or e}"
    return None


def load_latents(path: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Read a file written by `save_latents`: (latents float32, metadata). Raises KeyError without "latents",
    ValueError for a file that is not safetensors (truncated, corrupt, another format)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if LATENTS_KEY not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise KeyError(f"{path}: no tensor named {LATENTS_KEY!r} (found {sorted(f.keys())})")
            return f.get_tensor(LATENTS_KEY).float(), dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"not a readable safetensors file: {e}") from None


def slugify(text: str, max_chars: int = SLUG_MAX_CHARS, max_bytes: int = SLUG_MAX_BYTES) -> str:
    """A filesystem-safe name fragment: NFC-normalised; unicode letters, digits and - _ , . + ( ) ' kept; every
    other run (spaces, slashes, control and reserved characters) becomes one "_"; no leading/trailing . _ -;
    at most `max_chars` characters and `max_bytes` UTF-8 bytes; "video" if nothing is left."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(ch if (ch.isalnum() or ch in _SLUG_KEEP) else "_" for ch in text)
    slug = re.sub(r"_+", "_", kept).strip("._-")[:max_chars]
    while len(slug.encode("utf-8")) > max_bytes:
        slug = slug[:-1]
    return slug.strip("._-") or "video"


def video_filename(
    save_path: str | Path, seed: int, prompt: str, when: datetime | None = None, suffix: str = ""
) -> Path:
    """`{save_path}/{YYYY-mm-dd-HH-MM-SS}_seed{seed}_{slug}{suffix}.mp4` (official naming, safe slug); `when`
    defaults to now, `suffix` is the official --name-suffix (slugified too)."""
    stamp = (when or datetime.now()).strftime("%Y-%m-%d-%H-%M-%S")
    tail = f"_{slugify(suffix)}" if suffix else ""
    return Path(save_path) / f"{stamp}_seed{seed}_{slugify(prompt)}{tail}.mp4"


def latents_filename(video_path: str | Path) -> Path:
    """The latents file beside a video: `<name>.mp4` -> `<name>.latents.safetensors`."""
    video_path = Path(video_path)
    return video_path.with_name(video_path.stem + ".latents.safetensors")
