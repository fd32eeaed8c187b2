"""Memory preflight: parameter counts from configs, the estimate against measured CPU peaks (fresh processes,
VmHWM), and the refusal of a request that cannot fit (exit 2, one line, nothing loaded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
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
from hyvideo.pinned import pooled_bytes
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
        model = LlamaModel(LlamaConfig(**llama))
    ref = sum(p.numel() for p in model.parameters())
    assert llm_params(llama)[0] == ref
    # tensor by tensor, one decoder layer (what its pinned copy packs into slabs under block offload)
    assert sorted(memory.llm_layer_tensors(llama)) == sorted(p.numel() for p in model.layers[0].parameters())
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


def test_llava_vision_tower_counted_with_the_llm():
    """HunyuanVideo-I2V's LLaVA loads its CLIP vision tower and projector with the language model (both on the
    device, streamed or not: docs/DESIGN.md §23): counted from config.json as transformers builds them, with
    CLIPVisionConfig's defaults for the keys a saved config leaves out; a Qwen2.5-VL folder's tower is not loaded."""
    from transformers import LlavaConfig, LlavaModel

    released = {"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": 4096},
                "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                                  "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                                  "patch_size": 14}}  # fmt: skip
    with torch.device("meta"):
        model = LlavaModel(LlavaConfig(**released))
    want = sum(p.numel() for m in (model.vision_tower, model.multi_modal_projector) for p in m.parameters())
    assert memory.llava_vision_params(released) == want == 324_487_168
    assert memory.llava_vision_params({**released, "model_type": "qwen2_5_vl"}) == 0
    assert memory.llava_vision_params(memory.FULL_SIZE_LLM) == 0
    sizes = replace(full_size(), llm_vision=want)
    for offload in ("none", "block"):
        plan = MemoryPlan(544, 960, 129, offload=offload)
        with_tower, without = estimate(plan, sizes).stages[0], estimate(plan, full_size()).stages[0]
        assert with_tower.weights - without.weights == 2 * want  # fp16, on the device in both modes
        assert with_tower.host - without.host == 2 * want


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


# --- the estimate's arithmetic, term by term, for the released model (independent of the module builders) ---

DATA = ROOT / "tests" / "data"


def official_numels(name: str) -> dict[str, int]:
    return {k: math.prod(v) for k, v in json.loads((DATA / name).read_text())["keys"].items()}


def derived_dit_count(cfg: DiTConfig) -> int:
    """HYVideo-T/2 parameters from the preset's numbers: C hidden, M mlp, d head dim, F = 256 frequency channels."""
    C, M, d, F = cfg.hidden_size, cfg.mlp_hidden, cfg.hidden_size // cfg.heads, 256
    pt, ph, pw = cfg.patch_size

    def lin(i: int, o: int) -> int:
        return i * o + o

    double = 2 * (lin(C, 6 * C) + lin(C, 3 * C) + 2 * d + lin(C, C) + lin(C, M) + lin(M, C))
    single = lin(C, 3 * C + M) + lin(C + M, C) + 2 * d + lin(C, 3 * C)
    refiner = 4 * C + lin(C, 3 * C) + lin(C, C) + lin(C, M) + lin(M, C) + lin(C, 2 * C)
    txt_in = lin(cfg.text_states_dim, C) + lin(F, C) + lin(C, C) + lin(cfg.text_states_dim, C) + lin(C, C)
    txt_in += cfg.depth_refiner * refiner
    embed = (cfg.in_channels * pt * ph * pw * C + C) + 2 * (lin(F, C) + lin(C, C)) + lin(cfg.text_pool_dim, C)
    embed += lin(C, C)
    final = lin(C, cfg.out_channels * pt * ph * pw) + lin(C, 2 * C)
    return embed + txt_in + cfg.depth_double * double + cfg.depth_single * single + final


def test_dit_count_derived_from_the_preset():
    n = derived_dit_count(DiTConfig())
    assert n == sum(official_numels("official_dit_keys.json").values()) == 12_821_012_544
    assert full_size().dit == n


@pytest.mark.parametrize(
    "device, offload, fp8, hw",
    [
        ("cuda", "none", False, (720, 1280)),
        ("cpu", "none", False, (720, 1280)),
        ("cuda", "none", True, (544, 960)),
        ("cuda", "block", False, (720, 1280)),
        ("cuda", "block", True, (544, 960)),
        ("cuda", "model", False, (544, 960)),
        ("cpu", "block", False, (544, 960)),
    ],
)
def test_estimate_terms_exact_for_the_released_model(device, offload, fp8, hw):
    """Every stage's device and host bytes recomputed from the official key shapes and the dtypes (a halved or
    dropped term fails here, which the measured 25% bounds above cannot see)."""
    H, W = hw
    plan = MemoryPlan(H, W, 129, device=device, offload=offload, use_fp8=fp8)
    est = estimate(plan, full_size())
    dit = official_numels("official_dit_keys.json")
    shapes = json.loads((DATA / "official_dit_keys.json").read_text())["keys"]
    in_blocks = {k: v for k, v in dit.items() if k.startswith(("double_blocks.", "single_blocks."))}
    lin = {k: v for k, v in in_blocks.items() if len(shapes[k]) == 2}  # block Linear weights: the fp8-able ones
    blk_other = sum(in_blocks.values()) - sum(lin.values())
    other = sum(dit.values()) - sum(in_blocks.values())
    C, M = 3072, 12288
    # text: Llama-3-8B minus its 2 unused last layers, fp16; CLIP-L text tower fp16; 256 + 100 template tokens
    layer = 218_112_000
    llm = 128256 * 4096 + 32 * layer + 4096 - 2 * layer
    text_tokens = 356
    text_act = 2 * (4 * text_tokens * 4096 + 3 * text_tokens * 14336)
    want_text = memory.Stage("text encoders", 2 * llm + 2 * 123_060_480, text_act, host=2 * llm)
    if offload == "block" and device == "cuda":  # the LLM's 30 layers stream, 2 resident (docs/DESIGN.md §23)
        tensors = [4096 * 4096, 1024 * 4096, 1024 * 4096, 4096 * 4096, *[14336 * 4096] * 3, 4096, 4096]
        assert sum(tensors) == layer  # q, k, v, o, gate, up, down, two norms
        outside = 2 * (128256 * 4096 + 4096)  # embeddings, final norm: fp16 on the device
        slab = 2**30  # 8 x the largest tensor (an MLP weight, 117 MB in fp16) rounded up to a power of two
        pinned = pooled_bytes([[2 * n for n in tensors]] * 30, slab)
        resident = outside + 2 * 2 * layer + 2 * 123_060_480
        want_text = memory.Stage("text encoders", resident, text_act, host=max(2 * llm, outside + pinned))
    assert est.stages[0] == want_text
    # DiT, bf16 compute
    blocks = [f"double_blocks.{i}." for i in range(20)] + [f"single_blocks.{i}." for i in range(40)]
    per_block = [{k: v for k, v in dit.items() if k.startswith(b)} for b in blocks]
    big = max(per_block, key=lambda b: sum(b.values()))  # a double block
    big_lin = sum(v for k, v in big.items() if k in lin)
    wbytes = 1 if fp8 else 2
    stored = 2 * other + 2 * blk_other + wbytes * sum(lin.values())
    lat_t, lat_h, lat_w = 33, H // 8, W // 8
    img = lat_t * (lat_h // 2) * (lat_w // 2)
    act = (img + 256) * (10 * C + 4 * M) * 2 + img * (C // 2) * 4 + 4 * 16 * lat_t * lat_h * lat_w * 4
    if fp8:
        act += 2 * 2 * 21504 * 3072  # single_blocks.linear1, the largest block Linear, upcast (cast + scaled)
    window = 2 * (big_lin * wbytes + (sum(big.values()) - big_lin) * 2) + 2 * other
    weights = window if offload == "block" else stored
    streamed = offload == "block" and not fp8

    def block_bytes(b: dict[str, int]) -> list[int]:
        return [x for k, v in b.items() for x in ([v, 4] if fp8 and k in lin else [2 * v])]

    if device == "cpu":
        resident = 2 * (other + 2 * sum(big.values()))  # non-block layers + a window of 2 blocks, bf16
        want_dit = memory.Stage("DiT denoise", resident if streamed else stored, act)
    else:
        if offload == "block":
            groups = [block_bytes(b) for b in per_block]  # one pool of slabs of 8x the largest tensor, <= 1 GiB
            slab = min(2**30, 1 << (8 * max(n for g in groups for n in g) - 1).bit_length())
            pinned = pooled_bytes(groups, slab)
        elif offload == "model":
            pinned = memory.pinned_bytes([2 * v for k, v in dit.items() if k not in in_blocks] + block_bytes(in_blocks))
        else:
            pinned = 0
        host = pinned if streamed else (stored if fp8 else 2 * sum(dit.values())) + pinned
        want_dit = memory.Stage("DiT denoise", weights, act, host=host)
    assert est.stages[1] == want_dit
    # VAE decode, fp16, chunked tiles of 256 px x 5 frames, C0 = 128
    vae = sum(official_numels("official_vae_keys.json").values())
    vae_act = 10 * 256 * 256 * 5 * 128 * 2 + 75 * 2**20 + 3 * 129 * H * W * (2 + 4)
    assert est.stages[2] == memory.Stage("VAE decode", 2 * vae, vae_act, host=2 * vae)
    peak = max(s.weights + max(s.activations, s.load) for s in est.stages)
    assert est.device_peak == peak  # on the CPU the device is host RAM: the same peak (baseline 0 here)


def test_estimate_pinned_term_uses_slabs():
    """On CUDA the pinned DiT copies are counted as pinned (slabs in the compute dtype), not as the weights' sum:
    bf16 blocks 23.2 GiB -> 24.0 GiB pinned in one pool shared by the blocks (one slab set per block: 25.6; one
    power-of-two allocation per tensor: 31.3)."""
    sizes = full_size()
    est = estimate(MemoryPlan(720, 1280, 129, offload="block"), sizes)
    pinned = memory.dit_pinned(est.plan, sizes)
    assert est.stages[1].host == pinned
    assert pinned == 24 * GiB
    fp16 = memory.dit_pinned(MemoryPlan(720, 1280, 129, offload="block", precision="fp16"), sizes)
    assert fp16 == pinned  # same bytes per element: the host copy is in the compute dtype, not the file's
    fp32 = memory.dit_pinned(MemoryPlan(720, 1280, 129, offload="block", precision="fp32"), sizes)
    assert fp32 > 1.9 * pinned


# --- free memory, host RAM, processes ---


def test_device_capacity_is_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: GiB // 2)
    assert memory.device_capacity("cuda:0") == 3 * GiB + GiB // 2  # free + this process's cached blocks


def test_preflight_refuses_when_little_memory_is_free(monkeypatch):
    """An 80 GiB card with 4 GiB free (another process, a display): the preflight refuses, exit 2, one line."""
    from types import SimpleNamespace

    from hyvideo.request import UsageError

    class Props:
        total_memory = 80 * GiB

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(memory, "plan_from_request", lambda req: MemoryPlan(544, 960, 129, device="cuda"))
    monkeypatch.setattr(memory, "model_sizes", lambda cfg, paths: full_size())
    monkeypatch.setattr(memory, "host_capacity", lambda processes=1: 1024 * GiB)
    req = SimpleNamespace(device="cuda", memory_check=True)
    with pytest.raises(UsageError) as e:
        memory.preflight(req, None, DiTConfig())
    msg = str(e.value)
    assert "not enough memory" in msg and "4.0 GiB available" in msg and "\n" not in msg
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (79 * GiB, 80 * GiB))
    assert memory.preflight(req, None, DiTConfig()).device_peak < 79 * GiB  # the same request with the card free
    memory.preflight(req, None, DiTConfig(), device="cuda:1")  # this rank's card under torchrun
    assert asked == [torch.device("cuda"), torch.device("cuda:1")]


def test_host_ram_checked_on_cuda_for_every_process(monkeypatch):
    """Block offload pins the DiT in host RAM in every torchrun process of the machine."""
    sizes = full_size()
    one = estimate(MemoryPlan(544, 960, 129, offload="block"), sizes)
    four = estimate(MemoryPlan(544, 960, 129, offload="block", processes=4), sizes)
    assert four.host_total == 4 * one.host_peak and one.host_total == one.host_peak
    assert memory.check_fits(one, 80 * GiB, host=64 * GiB) is None
    msg = memory.check_fits(four, 80 * GiB, host=64 * GiB)
    assert msg is not None and msg.startswith("not enough host RAM") and "(4 processes)" in msg and "\n" not in msg
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert memory.local_processes() == 4


# --- planning: the per-stage plan and the cheapest flag set that fits (--dry-run, --gpu-memory) ---


@pytest.mark.parametrize(
    "gb, hw, flags",
    [
        (80, (720, 1280), []),
        (80, (544, 960), []),
        (24, (720, 1280), ["--offload", "block"]),
        (24, (544, 960), ["--use-fp8"]),
        (16, (720, 1280), None),
        (16, (544, 960), ["--offload", "block"]),
        (12, (720, 1280), None),
        (12, (544, 960), None),
    ],
)
def test_cheapest_fit_for_cards(gb, hw, flags):
    plan = MemoryPlan(*hw, 129)
    fit = memory.cheapest_fit(plan, full_size(), memory.card_capacity(gb))
    if flags is None:
        assert fit is None
        return
    assert fit is not None and memory.added_flags(fit, plan) == flags
    assert estimate(fit, full_size()).device_peak <= memory.card_capacity(gb)
    # nothing cheaper in the search order fits
    cands = memory.candidates(plan)
    assert all(estimate(c, full_size()).device_peak > memory.card_capacity(gb) for c in cands[: cands.index(fit)])


def test_candidates_keep_what_the_request_chose():
    plan = MemoryPlan(544, 960, 129, use_fp8=True, offload="model", tile_size=192)
    for c in memory.candidates(plan):
        assert c.use_fp8 and c.offload in ("model", "block") and c.tile_size <= 192
    assert memory.candidates(plan)[0] == plan


def test_dry_run_lines():
    lines = memory.dry_run_lines(MemoryPlan(720, 1280, 129), capacity=memory.card_capacity(24))
    assert lines[0].startswith("memory estimate for 1280x720x129")
    assert [ln.split(":")[0].strip() for ln in lines[1:4]] == ["text encoders", "DiT denoise", "VAE decode"]
    assert all("host" in ln for ln in lines[1:4])  # device and host per stage
    assert lines[4] == "capacity: cuda 23.5 GiB"
    assert lines[5].startswith("cheapest flags that fit: --offload block (peak cuda 20.4 GiB")
    assert memory.dry_run_lines(MemoryPlan(544, 960, 129), capacity=memory.card_capacity(80))[-1] == "fits as requested"
    # 12 GB: the text stage streams under block offload (2.1 GiB), so the DiT decides (docs/DESIGN.md §23)
    no = memory.dry_run_lines(MemoryPlan(544, 960, 129), capacity=memory.card_capacity(12))[-1]
    assert no.startswith("no flag set fits: even with --use-fp8 --offload block the DiT denoise stage needs 12.1 GiB")
    fit = memory.dry_run_lines(MemoryPlan(480, 848, 129), capacity=memory.card_capacity(12))[-1]
    assert fit.startswith("cheapest flags that fit: --offload block (peak cuda 10.1 GiB")
    # a 2 GB card: even streamed, the LLM's embeddings + 2 layers + CLIP-L do not fit
    no = memory.dry_run_lines(MemoryPlan(64, 64, 5), capacity=memory.card_capacity(2))[-1]
    assert no == (
        "no flag set fits: even with --offload block the text encoders stage needs 2.1 GiB; block offload already "
        "streams the LLM's layers and nothing else lowers this stage: it needs a larger card"
    )


def test_planning_sizes_fall_back_to_the_release(tmp_path):
    from hyvideo.checkpoints.layout import ModelPaths

    missing = ModelPaths("official", *(tmp_path / n for n in ("dit.pt", "vae", "llm", "clip")), None, None)
    assert memory.planning_sizes(DiTConfig(), missing) == full_size()
    assert memory.planning_sizes(None, None) == full_size()
    no_guidance = memory.planning_sizes(DiTConfig(guidance_embed=False), None)  # the HYVideo-T/2 preset
    assert no_guidance.dit == full_size().dit - (256 * 3072 + 3072 + 3072 * 3072 + 3072)  # without guidance_in
    assert no_guidance.llm == full_size().llm
