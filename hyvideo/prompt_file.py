"""`--prompt-file FILE`: many prompts in one run. Reading, checking and resolving the file into one request per entry.

Two formats, chosen by the file name:
- `.jsonl`: one JSON object per line; `prompt` is required and any of `OVERRIDES` replaces the command-line value
  for that line only, e.g. `{"prompt": "a cat", "seed": 3, "video_size": [544, 960], "infer_steps": 30}`. With
  --i2v-mode a line may name its first frame, `"image": "cat.png"` (relative to the prompt file's folder, or
  absolute; default --i2v-image-path), and set `i2v_stability` / `i2v_resize`.
- anything else (e.g. `.txt`): one prompt per line (with --i2v-mode, every line animates --i2v-image-path).
In both, blank lines and lines starting with `#` are skipped. Every problem is one `UsageError("--prompt-file", ...)`
naming the file and the line, raised before anything loads (every line's image is opened and decoded then).

`expand` runs after the command line was validated once: each entry's prompt and overrides rebuild only the
request's text and sampling stages, with the same checks `validate` applies to the same values given as flags.
"""

from __future__ import annotations

import json
import os
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from hyvideo.choices import SEED_MAX
from hyvideo.errors import UsageError
from hyvideo.image import SourceImage, load_image
from hyvideo.request import SampleRequest, for_prompt

FLAG = "--prompt-file"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_FILE_BYTES = 64 * 2**20  # a prompt file larger than this is almost certainly the wrong file

# Per-line keys of a .jsonl file -> (argparse dest, expected JSON type(s), description for errors)
OVERRIDES: dict[str, tuple[str, tuple[type, ...], str]] = {
    "seed": ("seed", (int,), "an integer"),
    "neg_prompt": ("neg_prompt", (str,), "a string"),
    "video_size": ("video_size", (list,), "[HEIGHT, WIDTH]"),
    "video_length": ("video_length", (int,), "an integer"),
    "infer_steps": ("infer_steps", (int,), "an integer"),
    "cfg_scale": ("cfg_scale", (int, float), "a number"),
    "embedded_cfg_scale": ("embedded_cfg_scale", (int, float), "a number"),
    "flow_shift": ("flow_shift", (int, float), "a number"),
    "num_videos": ("num_videos", (int,), "an integer"),
    "i2v_stability": ("i2v_stability", (bool,), "true or false"),  # these two need --i2v-mode
    "i2v_resize": ("i2v_resize", (str,), '"crop" or "stretch"'),
}
IMAGE_KEY = "image"  # a .jsonl line's first frame (needs --i2v-mode)
_I2V_KEYS = (IMAGE_KEY, "i2v_stability", "i2v_resize")


@dataclass(frozen=True)
class PromptEntry:
    """One prompt as written in the file."""

    line: int  # 1-based line number in the file (names outputs and errors)
    prompt: str  # stripped, non-empty
    overrides: dict[str, object]  # argparse dest -> value, from the line's JSON object ({} for .txt)
    image: Path | None = None  # the line's "image", resolved against the prompt file's folder


@dataclass(frozen=True)
class BatchItem:
    """One resolved entry: what `hyvideo.batch` generates for it."""

    index: int  # 0-based position among the entries (data-parallel ranks split on it)
    line: int  # 1-based line number in the file
    request: SampleRequest  # the command line's request with this line's prompt and overrides
    seed_is_random: bool  # no seed on the line and no --seed: the seed was drawn here, a re-run reuses a recorded one


@dataclass(frozen=True)
class Batch:
    """A prompt file's run: the command line's request and one resolved request per entry."""

    request: SampleRequest  # the command line's (prompt None); its stages other than text and sampling hold for all
    path: Path  # the --prompt-file
    items: tuple[BatchItem, ...]  # in file order


def _error(path: Path, line: int | None, message: str) -> UsageError:
    where = f"{path!s:.200} line {line}" if line is not None else f"{path!s:.200}"
    return UsageError(FLAG, f"{where}: {message}")


def read_text(path: str | Path) -> str:
    """The file's text (UTF-8, BOM allowed); errors name the file and, for bad bytes, the line."""
    path = Path(path)
    try:
        if not path.exists():
            raise _error(path, None, "does not exist; give a .txt (one prompt per line) or .jsonl file")
        if not path.is_file():
            raise _error(path, None, "is not a file; give a .txt (one prompt per line) or .jsonl file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise _error(path, None, f"is larger than {MAX_FILE_BYTES // 2**20} MiB; is this the right file?")
        data = path.read_bytes()
    except (OSError, ValueError) as e:
        raise _error(
            path, None, f"cannot be read ({os.strerror(e.errno) if getattr(e, 'errno', None) else e})"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _error(path, line, "is not UTF-8 text") from None


def parse_entries(path: str | Path, text: str | None = None) -> list[PromptEntry]:
    """Entries of a prompt file (`text` given: parse it as the contents of `path`). At least one is required."""
    path = Path(path)
    text = read_text(path) if text is None else text
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        entries.append(_parse_json_line(path, number, stripped) if jsonl else PromptEntry(number, stripped, {}))
    if not entries:
        raise _error(path, None, "has no prompts (blank lines and # comments are skipped)")
    return entries


def _parse_json_line(path: Path, line: int, text: str) -> PromptEntry:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(path, line, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _error(path, line, f'expected a JSON object like {{"prompt": "..."}}, got {type(obj).__name__}')
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _error(path, line, 'needs a non-empty string "prompt"')
    unknown = sorted(set(obj) - set(OVERRIDES) - {"prompt", IMAGE_KEY})
    if unknown:
        allowed = ", ".join(["prompt", IMAGE_KEY, *OVERRIDES])
        raise _error(path, line, f"unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    image = obj.get(IMAGE_KEY)
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise _error(path, line, f"image must be a file path (a string), got {json.dumps(image)[:60]}")
    overrides: dict[str, object] = {}
    for key, value in obj.items():
        if key in ("prompt", IMAGE_KEY) or (value is None and key == "neg_prompt"):
            continue
        dest, types, what = OVERRIDES[key]
        if isinstance(value, bool) != (types == (bool,)) or not isinstance(value, types):
            raise _error(path, line, f"{key} must be {what}, got {json.dumps(value)[:60]}")
        if key == "video_size" and not (len(value) == 2 and all(type(v) is int for v in value)):
            raise _error(path, line, f"video_size must be [HEIGHT, WIDTH] (two integers), got {json.dumps(value)[:60]}")
        overrides[dest] = value
    return PromptEntry(line, prompt.strip(), overrides, path.parent / image if image is not None else None)


def expand(args: Namespace, request: SampleRequest) -> Batch:
    """The prompt file named by `request` as one request per entry: the flags in `args` with the line's prompt and
    overrides (LoRAs and every other stage are the validated `request`'s).

    Seeds: the line's `seed`; else `--seed` + the entry's index; else one drawn at random (the batch runner replaces
    it with the seed recorded beside earlier outputs of the same line, so a re-run resumes with the same seed).
    """
    path = request.prompt_file
    assert path is not None, "expand() needs a request with a prompt file"
    items = []
    images: dict[Path, SourceImage] = {}  # each file decoded once, every one before anything loads
    for index, entry in enumerate(parse_entries(path)):
        values = {**vars(args), "prompt": entry.prompt, **entry.overrides}
        image = _line_image(path, entry, request, images)
        given_seed = "seed" in entry.overrides
        if args.seed_type == "file" and not given_seed:
            raise _error(path, entry.line, 'needs a "seed" (--seed-type file takes every seed from the file)')
        if not given_seed and args.seed is not None:
            values["seed"] = args.seed + index
            if values["seed"] > SEED_MAX:
                raise _error(path, entry.line, f"--seed {args.seed} + entry index {index} exceeds {SEED_MAX}")
        try:
            one = for_prompt(request, values, image)
        except UsageError as e:
            raise _error(path, entry.line, str(e)) from None
        items.append(BatchItem(index, entry.line, one, seed_is_random=values["seed"] is None))
    return Batch(request, Path(path), tuple(items))


def _line_image(
    path: Path, entry: PromptEntry, request: SampleRequest, images: dict[Path, SourceImage]
) -> SourceImage | None:
    """The entry's first frame with --i2v-mode (its "image", else --i2v-image-path); None without --i2v-mode. A
    missing, truncated or otherwise bad image names the prompt file, the line and the image."""
    if not request.i2v_mode:
        used = [key for key in _I2V_KEYS if key in entry.overrides or (key == IMAGE_KEY and entry.image)]
        if used:
            raise _error(path, entry.line, f"{', '.join(used)} need(s) --i2v-mode (image-to-video)")
        return None
    if entry.image is None:
        if request.i2v_image is None:
            raise _error(path, entry.line, 'no image: give "image" on the line (a .jsonl) or --i2v-image-path IMG')
        return None
    if entry.image not in images:
        try:
            images[entry.image] = load_image(entry.image, flag=IMAGE_KEY)
        except UsageError as e:
            raise _error(path, entry.line, str(e)) from None
    return images[entry.image]
