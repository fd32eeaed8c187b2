"""--prompt-file: reading, checking and expanding a prompt file into one request per entry (no models load)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyvideo import batch, cli
from hyvideo.cli import parse_batch
from hyvideo.errors import UsageError
from hyvideo.prompt_file import parse_entries

LONG = " ".join(f"word{i} and a slash / here" for i in range(150))  # far more than 256 LLM and 77 CLIP tokens


def flags(base: Path, out: Path, prompt_file: Path, *extra: str) -> list[str]:
    return [
        "--prompt-file", str(prompt_file), "--model-base", str(base), "--save-path", str(out), "--device", "cpu",
        "--video-size", "32", "32", "--video-length", "5", "--infer-steps", "1", "--precision", "fp32",
        "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", *extra,
    ]  # fmt: skip


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reading and expanding
# ---------------------------------------------------------------------------------------------------------------
def test_txt_entries_keep_line_numbers_unicode_and_slashes(tmp_path):
    base = tmp_path / "ckpts"
    base.mkdir()
    pf = write(tmp_path / "p.txt", ["# header", "", "  a cat / a dog  ", "猫が歩く — ünïcödé", "#x", LONG])
    req = parse_batch(flags(base, tmp_path / "o", pf, "--seed", "10"))
    assert req.request.prompt is None and req.path == pf
    assert [(it.line, it.index) for it in req.items] == [(3, 0), (4, 1), (6, 2)]
    assert [it.request.prompt for it in req.items] == ["a cat / a dog", "猫が歩く — ünïcödé", LONG]
    assert [it.request.seed for it in req.items] == [10, 11, 12]  # --seed + entry index
    assert not any(it.seed_is_random for it in req.items)
    names = [batch.output_path(it.request, it.line, it.request.seed).name for it in req.items]
    assert names[0] == "0003_seed10_a_cat_a_dog.mp4" and "/" not in "".join(names)
    assert names[1].startswith("0004_seed11_猫が歩く")
    assert len(names[2].encode()) < 255


def test_jsonl_overrides_apply_per_line(tmp_path):
    base = tmp_path / "ckpts"
    base.mkdir()
    pf = write(
        tmp_path / "p.jsonl",
        [
            json.dumps({"prompt": "plain"}),
            json.dumps(
                {
                    "prompt": "custom",
                    "seed": 99,
                    "video_size": [48, 64],
                    "video_length": 9,
                    "infer_steps": 2,
                    "cfg_scale": 2.5,
                    "neg_prompt": "blurry",
                    "embedded_cfg_scale": 4,
                    "flow_shift": 5.0,
                    "num_videos": 3,
                }
            ),
        ],
    )
    req = parse_batch(flags(base, tmp_path / "o", pf))
    plain, custom = (it.request for it in req.items)
    assert (plain.height, plain.width, plain.video_length, plain.infer_steps) == (32, 32, 5, 1)
    assert req.items[0].seed_is_random and not req.items[1].seed_is_random
    assert (custom.seed, custom.height, custom.width, custom.video_length) == (99, 48, 64, 9)
    assert (custom.infer_steps, custom.cfg_scale, custom.neg_prompt) == (2, 2.5, "blurry")
    assert (custom.embedded_cfg_scale, custom.flow_shift, custom.num_videos) == (4.0, 5.0, 3)


@pytest.mark.parametrize(
    ("lines", "expect"),
    [
        ([], "has no prompts"),
        (["# only a comment", ""], "has no prompts"),
        (['{"prompt": "ok"}', "", '{"prompt": "x", seed: 1}'], "line 3: not valid JSON"),
        (['{"prompt": "ok"}', '["a list"]'], "line 2: expected a JSON object"),
        (['{"seed": 1}'], 'line 1: needs a non-empty string "prompt"'),
        (['{"prompt": "a", "sede": 1}'], "line 1: unknown key(s) sede"),
        (['{"prompt": "a", "seed": "7"}'], "line 1: seed must be an integer"),
        (['{"prompt": "a", "video_size": [32]}'], "line 1: video_size must be [HEIGHT, WIDTH]"),
        (['{"prompt": "a"}', '{"prompt": "b", "video_length": 6}'], "line 2: --video-length: must be 4n+1"),
        (['{"prompt": "a", "infer_steps": 0}'], "line 1: --infer-steps"),
    ],
)
def test_bad_prompt_files_exit_2_naming_the_line(tmp_path, capsys, lines, expect):
    base = tmp_path / "ckpts"
    base.mkdir()
    pf = write(tmp_path / "p.jsonl", lines) if lines else tmp_path / "p.jsonl"
    if not lines:
        pf.write_text("")
    out = tmp_path / "o"
    assert cli.main(flags(base, out, pf)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --prompt-file: ") and str(pf) in err, err
    assert expect in err, err
    assert not out.exists()


def test_prompt_file_usage_errors(tmp_path, capsys):
    base = tmp_path / "ckpts"
    base.mkdir()
    good = write(tmp_path / "p.txt", ["a cat"])
    cases = [
        (flags(base, tmp_path / "o", tmp_path / "missing.txt"), "does not exist"),
        (flags(base, tmp_path / "o", tmp_path), "is not a file"),
        ([*flags(base, tmp_path / "o", good), "--prompt", "x"], "give either --prompt or --prompt-file"),
    ]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok\n" + "caf\xe9\n".encode("latin-1"))
    cases.append((flags(base, tmp_path / "o", bad), "line 2: is not UTF-8 text"))
    if os.geteuid() != 0:  # root reads anything
        locked = write(tmp_path / "locked.txt", ["a"])
        locked.chmod(0)
        cases.append((flags(base, tmp_path / "o", locked), "cannot be read"))
    for argv, expect in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--prompt-file" in err and expect in err, err


def test_seed_type_file_takes_every_seed_from_the_file(tmp_path, capsys):
    base = tmp_path / "ckpts"
    base.mkdir()
    pf = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a", "seed": 5}), json.dumps({"prompt": "b", "seed": 1})])
    req = parse_batch(flags(base, tmp_path / "o", pf, "--seed-type", "file"))
    assert [it.request.seed for it in req.items] == [5, 1] and not any(it.seed_is_random for it in req.items)
    missing = write(tmp_path / "m.jsonl", [json.dumps({"prompt": "a", "seed": 5}), json.dumps({"prompt": "b"})])
    for argv, expect in [
        (flags(base, tmp_path / "o", missing, "--seed-type", "file"), 'line 2: needs a "seed"'),
        (flags(base, tmp_path / "o", pf, "--seed-type", "file", "--seed", "3"), "drop --seed N"),
        (["--prompt", "a", "--model-base", str(base), "--seed-type", "file"], "takes each seed from --prompt-file"),
    ]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err, err


# ---------------------------------------------------------------------------------------------------------------
# Property: a prompt file of any content is either resolved or refused with a one-line UsageError
# ---------------------------------------------------------------------------------------------------------------
_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
_JSON = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)  # fmt: skip
_PLAUSIBLE_VALUE = st.one_of(
    st.integers(-5, 300), st.floats(-2, 20), st.lists(st.integers(-16, 600), min_size=0, max_size=3), _JSON
)
_KEYS = st.sampled_from(["prompt", "seed", "neg_prompt", "video_size", "video_length", "infer_steps", "cfg_scale",
                         "embedded_cfg_scale", "flow_shift", "num_videos", "bogus"])  # fmt: skip
_OBJECT_LINE = st.dictionaries(_KEYS, _PLAUSIBLE_VALUE | st.text(max_size=12), max_size=4).map(json.dumps)
_LINE = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "   ", "# comment", '{"prompt": "a cat"}', '{"prompt": "a cat", "seed": 3}', "{", "[]"]),
    _OBJECT_LINE,
    _JSON.map(json.dumps),
)
_CONTENT = st.one_of(
    st.lists(_LINE, max_size=6).map(lambda lines: "\n".join(lines).encode()),
    st.binary(max_size=64),
    st.lists(_LINE, max_size=3).map(lambda lines: b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8")),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("prompt-files")
    (d / "ckpts").mkdir()
    return d


@settings(max_examples=200, deadline=None)
@given(content=_CONTENT, suffix=st.sampled_from([".txt", ".jsonl"]))
def test_random_prompt_files_never_crash(content: bytes, suffix: str, scratch: Path) -> None:
    path = scratch / f"prompts{suffix}"
    path.write_bytes(content)
    out = scratch / "results"
    flags = ["--prompt-file", str(path), "--model-base", str(scratch / "ckpts"), "--save-path", str(out)]
    try:
        req = cli.parse_batch([*flags, "--device", "cpu"])
    except UsageError as e:
        assert str(e) and "\n" not in str(e) and "\r" not in str(e), repr(str(e))
    else:
        assert req.items and all(item.request.prompt and item.request.prompt.strip() for item in req.items)
    assert not out.exists()


def test_jsonl_image_paths_resolve_against_the_file(tmp_path):
    """A line's "image" is relative to the prompt file's folder (not the working directory); absolute paths stay;
    the i2v keys are typed like the flags (a boolean for i2v_stability)."""
    absolute = tmp_path / "abs.png"
    (tmp_path / "sub").mkdir()
    pf = write(tmp_path / "sub" / "p.jsonl", [
        json.dumps({"prompt": "a", "image": "imgs/x.png", "i2v_stability": True, "i2v_resize": "stretch"}),
        json.dumps({"prompt": "b", "image": str(absolute)}),
        json.dumps({"prompt": "c"}),
    ])  # fmt: skip
    a, b, c = parse_entries(pf)
    assert a.image == tmp_path / "sub" / "imgs" / "x.png" and b.image == absolute and c.image is None
    assert a.overrides == {"i2v_stability": True, "i2v_resize": "stretch"}
    for bad in ({"prompt": "a", "i2v_stability": "yes"}, {"prompt": "a", "image": ""}, {"prompt": "a", "image": 1}):
        write(pf, [json.dumps(bad)])
        with pytest.raises(UsageError, match="line 1"):
            parse_entries(pf)
