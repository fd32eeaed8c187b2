"""Memory preflight: parameter counts from configs, the estimate against measured CPU peaks (fresh processes,
VmHWM), and the refusal of a request that cannot fit (exit 2, one line, nothing loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyvideo import memory, pipeline
from hyvideo.cli import main
from hyvideo.config import DiTConfig
from hyvideo.memory import (
    GiB,
    MemoryPlan,
    ModelSizes,
    clip_text_params,
    dit_sizes,
    estimate,
    llm_params,
    vae_params,
)
from hyvideo.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
MID = DiTConfig(
    hidden_size=512,
    heads=8,
    depth_double=4,
    depth_single=8,
    rope_axes=(16, 24, 24),
    text_states_dim=32,
    text_pool_dim=32,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("mem")
    return {"tiny": write_tiny_model(base / "tiny", seed=0), "mid": write_tiny_model(base / "mid", seed=0, dit=MID)}


# --- parameter counts ---


def test_full_size_dit_count_matches_release():
    s = dit_sizes(DiTConfig())
    assert s["dit_block_linear"] + s["dit_block_other"] + s["dit_other"] == 12_821_012_544  # docs/DESIGN.md §2.1


def test_text_encoder_formulas_match_transformers():
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    llama = {"hidden_size": 256, "num_hidden_layers": 3, "intermediate_size": 512, "vocab_size": 1000,
             "num_attention_heads": 8, "num_key_value_heads": 2}  # fmt: skip
    with torch.device("meta"):
        ref = sum(p.numel() for p in LlamaModel(LlamaConfig(**llama)).parameters())
    assert llm_params(llama)[0] == ref
    assert llm_params({"text_config": llama})[0] == ref  # LLaVA-style nesting
    clip = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": 500,
            "max_position_embeddings": 77, "num_attention_heads": 4}  # fmt: skip
    with torch.device("meta"):
        ref = sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**clip)).parameters())
    assert clip_text_params(clip) == ref
    # the released encoders: Llama-3-8B base model (no LM head) and CLIP ViT-L/14's text tower
    llama3 = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
              "num_attention_heads": 32, "num_key_value_heads": 8}  # fmt: skip
    assert llm_params(llama3)[0] == 8_030_261_248 - 128256 * 4096
    assert clip_text_params(memory.FULL_SIZE_CLIP) == 123_060_480


def test_vae_count():
    from hyvideo.modules.vae import HYVideoVAE, VAEConfig

    with torch.device("meta"):
        vae = HYVideoVAE(VAEConfig())
    assert vae_params(VAEConfig()) == sum(p.numel() for p in vae.parameters()) > 100_000_000


# --- the estimate's structure ---


def full_size() -> ModelSizes:
    return memory.full_size_sizes()


def test_text_stage_counts_only_the_llm_layers_built():
    """hidden_state_skip_layer 2 (default): the last two Llama-3-8B layers are never built (218M parameters each)."""
    sizes = full_size()
    assert sizes.llm_layer == 218_112_000 and sizes.llm == 32 * sizes.llm_layer + 128256 * 4096 + 4096
    text = {k: estimate(MemoryPlan(544, 960, 129, llm_skip=k), sizes).stages[0].weights for k in (0, 2)}
    assert text[0] - text[2] == 2 * sizes.llm_layer * 2  # fp16 weights


def test_modes_order_and_paper_numbers():
    sizes = full_size()
    peak = {}
    for fp8 in (False, True):
        for offload in ("none", "model", "block"):
            plan = MemoryPlan(720, 1280, 129, use_fp8=fp8, offload=offload)
            peak[fp8, offload] = estimate(plan, sizes).device_peak
    assert peak[True, "none"] < peak[False, "none"]  # fp8 halves the block weights
    assert peak[False, "block"] < peak[False, "none"] and peak[True, "block"] < peak[True, "none"]
    dit_bf16 = sizes.dit * 2
    upcast = 2 * sizes.dit_largest_linear * 2  # fp8 pays one layer's bf16 weight (cast + scaled) while it runs
    assert peak[False, "none"] - peak[True, "none"] == sizes.dit_block_linear - upcast
    assert peak[False, "none"] > dit_bf16  # weights plus activations
    small = estimate(MemoryPlan(544, 960, 129), sizes).device_peak
    assert small < peak[False, "none"]
    # sequence parallelism divides the DiT's activations, not its weights
    par = estimate(MemoryPlan(720, 1280, 129, parallel=4), sizes)
    one = estimate(MemoryPlan(720, 1280, 129), sizes)
    assert par.stages[1].weights == one.stages[1].weights and par.stages[1].activations < one.stages[1].activations
    # FSDP-sharded block weights (torchrun --shard-weights): 1/N of the blocks plus one gathered block
    shard = estimate(MemoryPlan(720, 1280, 129, parallel=4, shards=4), sizes).stages[1].weights
    blocks = (sizes.dit_block_linear + sizes.dit_block_other) * 2
    assert shard == pytest.approx(one.stages[1].weights - blocks * 3 / 4 + sum(sizes.dit_largest_block) * 2, rel=1e-6)


def _measure(base: Path, tmp: Path, *extra: str) -> dict:
    """A full CPU run in a fresh process: its VmHWM and the preflight's host estimate, for the whole run and up to
    the end of denoising (text encoders + DiT stages)."""
    code = (
        "import json, sys\n"
        "from hyvideo import pipeline\n"
        "from hyvideo.cli import parse_request\n"
        "def hwm(): return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024\n"
        "seen = {}\n"
        "real, denoise = pipeline.preflight, pipeline.denoise\n"
        "pipeline.preflight = lambda *a: seen.setdefault('e', real(*a))\n"
        "def after_denoise(*a):\n"
        "    out = denoise(*a)\n"
        "    seen['dit'] = hwm()\n"
        "    return out\n"
        "pipeline.denoise = after_denoise\n"
        "pipeline.run(parse_request(json.loads(sys.argv[1])))\n"
        "e = seen['e']\n"
        "est_dit = e.baseline + max(s.device for s in e.stages[:2])\n"
        "print(json.dumps({'hwm': hwm(), 'est': e.host_peak, 'hwm_dit': seen['dit'], 'est_dit': est_dit}))\n"
    )
    argv = [
        "--model-base", str(base), "--prompt", "a cat walks", "--video-size", "128", "128", "--video-length", "9",
        "--infer-steps", "1", "--seed", "1", "--save-path", str(tmp), "--precision", "fp32", "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu", *extra,
    ]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name, extra",
    [("tiny", []), ("mid", []), ("mid", ["--offload", "block"]), ("mid", ["--use-fp8", "--offload", "block"])],
    ids=["tiny", "mid", "mid-block", "mid-fp8-block"],
)
def test_estimate_within_25_percent_of_measured_cpu_peak(models, tmp_path, name, extra):
    r = _measure(models[name], tmp_path, *extra)
    through_dit = r["est_dit"] / r["hwm_dit"]  # text encoders + DiT (block streaming, fp8, dtype casts)
    assert 0.75 <= through_dit <= 1.25, (r, through_dit)
    ratio = r["est"] / r["hwm"]
    assert 0.75 <= ratio <= 1.25, (r, ratio)


# --- preflight refusal ---


def test_impossible_request_refused_before_loading(models, tmp_path, capsys, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("loaded a component after the preflight should have refused")

    for stage in ("encode_text", "load_denoiser", "load_decoder"):
        monkeypatch.setattr(pipeline, stage, must_not_run)
    argv = ["--model-base", str(models["tiny"]), "--prompt", "x", "--video-size", "8192", "8192", "--video-length",
            "257", "--save-path", str(tmp_path / "o"), "--device", "cpu", "--vae-tiling", "--seed", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(
        "memory estimate for 8192x8192x257" in line for line in err
    )  # ~0.3 TB: refused on any machine  # the estimate is printed first
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [err[-1]] and err[-1].startswith("error: not enough memory"), err
    assert "--use-fp8" in err[-1] and "--offload block" in err[-1] and "--video-size" in err[-1]
    assert "Traceback" not in "".join(err)
    assert not (tmp_path / "o").exists()
    # the same request is let through (to the stages) with --no-memory-check
    with pytest.raises(AssertionError, match="preflight should have refused"):
        pipeline.run(__import__("hyvideo.cli").cli.parse_request([*argv, "--no-memory-check"]))


def test_check_fits_message_is_one_line():
    est = estimate(MemoryPlan(720, 1280, 129, use_fp8=True, offload="block"), full_size())
    msg = memory.check_fits(est, 8 * GiB)
    assert msg is not None and "\n" not in msg and "--use-fp8" not in msg  # already on: not suggested again
    assert memory.check_fits(est, 200 * GiB) is None
