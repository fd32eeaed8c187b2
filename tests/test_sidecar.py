"""JSON sidecars: written with every MP4 (atomically, together), parse, match the run; fingerprints; --decode-latents
reuses the generating run's sidecar."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hyvideo import io, pipeline, sidecar
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import main
from hyvideo.tiny import write_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m", "official", seed=6)


def argv(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model-base", str(base), "--prompt", "a lighthouse / at night, 夜", "--video-size", "32", "48",
        "--video-length", "5", "--infer-steps", "2", "--seed", "21", "--save-path", str(out), "--precision", "fp32",
        "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32",
        "--device", "cpu", "--flow-shift", "5.5", "--embedded-cfg-scale", "4.5", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(model, tmp_path_factory) -> tuple[Path, Path]:
    """One CLI run with a LoRA and --save-latents: (MP4, LoRA file)."""
    tmp = tmp_path_factory.mktemp("run")
    lora = tmp / "style.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"lora_unet_double_blocks_0_img_mlp_fc1.lora_down.weight": torch.randn(2, 48, generator=g),
               "lora_unet_double_blocks_0_img_mlp_fc1.lora_up.weight": torch.randn(192, 2, generator=g)}, lora)  # fmt: skip
    out = tmp / "out"
    assert main(argv(model, out, "--save-latents", "--lora", f"{lora}:0.3")) == 0
    [mp4] = out.glob("*.mp4")
    return mp4, lora


def test_sidecar_matches_the_run(run, model):
    mp4, lora = run
    path = sidecar.sidecar_path(mp4)
    assert path.name == mp4.name.removesuffix(".mp4") + ".json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["schema"] == sidecar.SCHEMA
    assert record["prompt"] == "a lighthouse / at night, 夜" and record["negative_prompt"] is None
    assert (record["seed"], record["height"], record["width"], record["video_length"]) == (21, 32, 48, 5)
    assert (record["infer_steps"], record["flow_shift"], record["embedded_cfg_scale"], record["cfg_scale"]) == (
        2, 5.5, 4.5, 1.0)  # fmt: skip
    paths = locate(model)
    dit = record["model"]["dit"]
    assert Path(dit["path"]) == paths.dit.resolve() and dit["fingerprint"] == sidecar.fingerprint(paths.dit.resolve())
    assert re.fullmatch(r"[0-9a-f]{16}", dit["fingerprint"])
    assert record["model"]["layout"] == "official" and record["model"]["vae"]["fingerprint"] != dit["fingerprint"]
    assert record["loras"] == [{"path": str(lora.resolve()), "scale": 0.3, "fingerprint": sidecar.fingerprint(lora)}]
    assert record["precision"] == {"dit": "fp32", "vae": "fp32", "text_encoder": "fp32", "text_encoder_2": "fp32"}
    assert record["runtime"]["device"] == "cpu" and record["runtime"]["parallel"]["world_size"] == 1
    assert record["versions"]["torch"] == torch.__version__
    for stage in ("text encode", "load DiT", "denoise seed 21", "decode seed 21"):
        assert record["timings_s"][stage] > 0
    assert record["peak_memory_mib"]["denoise seed 21 (host RSS)"] > 0


def test_fingerprint_is_cheap_identity(tmp_path):
    a = tmp_path / "w.safetensors"
    a.write_bytes(b"x" * 3_000_000)
    first = sidecar.fingerprint.__wrapped__(a)
    assert first == sidecar.fingerprint.__wrapped__(a)
    st = a.stat()
    a.write_bytes(b"y" + b"x" * 2_999_999)  # same size; restore the mtime: the first MiB still tells them apart
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sidecar.fingerprint.__wrapped__(a) != first
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    before = sidecar.fingerprint.__wrapped__(folder)
    (folder / "notes.txt").write_text("not a weight file")
    assert sidecar.fingerprint.__wrapped__(folder) == before
    (folder / "config.json").write_text("{}")
    assert sidecar.fingerprint.__wrapped__(folder) != before
    assert sidecar.fingerprint.__wrapped__(tmp_path / "missing") == "missing"


def test_sidecar_and_mp4_are_written_together(run, tmp_path, monkeypatch):
    """A failing MP4 write leaves neither file (nor temporaries); a good one leaves both."""
    mp4, _ = run
    record = sidecar.read(sidecar.sidecar_path(mp4))
    req = pipeline.SampleRequest.__new__(pipeline.SampleRequest)  # only fps and save_latents are read
    object.__setattr__(req, "fps", 24)
    object.__setattr__(req, "save_latents", False)
    video = torch.zeros(3, 5, 16, 16)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_mp4", full_disk)
    with pytest.raises(OSError):
        pipeline.write_video(req, tmp_path / "v.mp4", None, video, record)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    path = pipeline.write_video(req, tmp_path / "v.mp4", None, video, record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.mp4"] and path == tmp_path / "v.mp4"
    assert sidecar.read(tmp_path / "v.json") == record


def test_decode_latents_reuses_the_generation_sidecar(run, model, tmp_path):
    mp4, _ = run
    latents = io.latents_filename(mp4)
    assert latents.is_file() and sidecar.for_latents(latents) == sidecar.sidecar_path(mp4)
    decode = ["--model-base", str(model), "--decode-latents", str(latents), "--vae-precision", "fp32",
              "--device", "cpu", "--fps", "12"]  # fmt: skip
    out = tmp_path / "a"
    assert main([*decode, "--save-path", str(out)]) == 0
    record = sidecar.read(out / (mp4.stem + ".json"))
    original = sidecar.read(sidecar.sidecar_path(mp4))
    assert record["prompt"] == original["prompt"] and record["seed"] == 21 and record["loras"] == original["loras"]
    assert record["fps"] == 12 and record["timings_s"] == original["timings_s"]  # the generation's record
    assert record["decoded_from"]["latents"] == str(latents.resolve())
    assert record["decoded_from"]["sidecar"] == str(sidecar.sidecar_path(mp4).resolve())
    assert record["decoded_from"]["vae_precision"] == "fp32"

    # latents copied without their sidecar: the latents file's own metadata
    alone = tmp_path / "alone"
    alone.mkdir()
    copy = alone / latents.name
    copy.write_bytes(latents.read_bytes())
    out = tmp_path / "b"
    assert main([*decode[:3], str(copy), *decode[4:], "--save-path", str(out)]) == 0
    record = sidecar.read(out / (mp4.stem + ".json"))
    assert record["prompt"] == "a lighthouse / at night, 夜" and record["seed"] == 21
    assert record["decoded_from"]["sidecar"] is None and record["latents_metadata"]["video_length"] == "5"

    # a sidecar that does not fit the latents is not used
    wrong = dict(original, height=64)
    sidecar.sidecar_path(copy).write_text(json.dumps(wrong))
    out = tmp_path / "c"
    assert main([*decode[:3], str(copy), *decode[4:], "--save-path", str(out)]) == 0
    record = sidecar.read(out / (mp4.stem + ".json"))
    assert "latents_metadata" in record and record.get("height") is None
