"""Speed features: attention backends (SageAttention/flash guards and packing), regional compile, CLI wiring."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hyvideo import pipeline
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import main, parse_request
from hyvideo.compile import compile_blocks
from hyvideo.modules.attention import KeyMask, attention, check_backend, kernel_for, sage_attention
from hyvideo.tiny import TINY_DIT, random_dit, write_tiny_model

PROMPT = "A cat walks on the grass, realistic style."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "official", "official", seed=3)


def args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model-base", str(base), "--prompt", PROMPT, "--video-size", "64", "96", "--video-length", "9",
        "--infer-steps", "4", "--seed", "7", "--save-path", str(out), "--precision", "fp32", "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu", *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------- attention backends
@pytest.mark.parametrize("backend,package", [("sage", "sageattention"), ("flash", "flash_attn")])
def test_missing_backend_is_one_line_exit_2(tmp_path, capsys, backend, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    assert main(args(tmp_path, tmp_path / "out", "--attn-backend", backend)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --attn-backend:") and package.split("_")[0] in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=f"--attn-backend {backend}: .* not installed"):
        check_backend(backend, torch.device("cpu"))


def test_cpu_and_fp32_always_use_sdpa():
    q = torch.zeros(1, 4, 2, 8)
    assert {kernel_for(q, b) for b in ("auto", "sdpa", "flash", "sage")} == {"sdpa"}


def nhd_sdpa(q, k, v, tensor_layout="HND", is_causal=False):
    """sageattn's contract (NHD layout: (B, L, H, D) in and out), computed exactly with SDPA."""
    assert tensor_layout == "NHD" and not is_causal
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def test_sage_packing_matches_masked_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 9, 2, 8, generator=g) for _ in range(3))
    valid = torch.arange(9)[None] < torch.tensor([9, 5, 7])[:, None]
    valid[2, 3] = False  # valid tokens need not be contiguous
    masked = attention(q, k, v, KeyMask(valid), "sdpa").view(3, 9, 2, 8)
    packed = sage_attention(q, k, v, KeyMask(valid), nhd_sdpa)
    assert torch.allclose(packed[valid], masked[valid], atol=1e-6)
    assert packed[~valid].abs().max() == 0
    assert torch.allclose(sage_attention(q, k, v, None, nhd_sdpa).reshape(3, 9, 16), attention(q, k, v), atol=1e-6)


# --------------------------------------------------------------------------- --compile
def fresh_tiny_dit() -> tuple[torch.nn.Module, tuple]:
    """A tiny random DiT and one forward's inputs, with dynamo's caches and counters reset."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = random_dit(TINY_DIT, seed=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    states, pooled = torch.randn(1, 5, TINY_DIT.text_states_dim, generator=g), torch.randn(1, 32, generator=g)
    return model, (x, torch.tensor([700.0]), states, torch.ones(1, 5, dtype=torch.long), pooled, torch.tensor([6e3]))


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_blocks_match_eager(mode):
    """Regional torch.compile (inductor, CPU) on the tiny DiT: same output within fp32 tolerance, same keys.
    "reduce-overhead" is the CUDA-graph mode: on the CPU inductor skips the graphs, the compiled math is tested."""
    model, inputs = fresh_tiny_dit()
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = model(*inputs)
        compile_blocks(model, mode=mode)
        compiled = model(*inputs)
    assert all(b._compiled_call_impl is not None for b in [*model.double_blocks, *model.single_blocks])
    assert model.txt_in._compiled_call_impl is None  # only the repeated blocks
    assert list(model.state_dict()) == keys
    assert (compiled - eager).abs().max().item() <= 1e-5


def test_compiled_blocks_with_block_offload_match_eager():
    """--compile with --offload block: the streaming hooks run eagerly around the compiled blocks (no recompiles per
    block index), every block is loaded and evicted in order, and the output equals eager."""
    from hyvideo.offload import apply_offload

    model, inputs = fresh_tiny_dit()
    with torch.no_grad():
        eager = model(*inputs)
        apply_offload(model, "block", torch.device("cpu"))
        compile_blocks(model)
        outs = [model(*inputs) for _ in range(2)]
    n = len(model.double_blocks) + len(model.single_blocks)
    runs = [i for kind, i in model._offload.trace if kind == "run"]
    assert runs == list(range(n)) * 2
    assert all((o - eager).abs().max().item() <= 1e-5 for o in outs)
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] <= 4, dict(frames)  # double, single, last single (keep): no per-block-index frames


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--compile-mode", "fastest"], "unknown 'fastest'"),
        (["--compile-mode", "reduce-overhead"], "needs a CUDA device, got --device cpu"),
        (["--compile-mode", "max-autotune"], "needs a CUDA device"),
    ],
)
def test_compile_mode_errors_are_one_line_exit_2(tmp_path, capsys, extra, message):
    assert main(args(tmp_path, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --compile-mode:") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_cuda_graphs_refused_with_block_offload():
    from hyvideo.request import UsageError, _check_compile_mode

    with pytest.raises(UsageError, match="not with --offload block"):
        _check_compile_mode("reduce-overhead", "cuda:0", "block")
    assert _check_compile_mode("reduce-overhead", "cuda:0", "model") == "reduce-overhead"
    assert _check_compile_mode("max-autotune-no-cudagraphs", "cpu", "block") == "max-autotune-no-cudagraphs"


def test_compile_mode_implies_compile_and_reaches_torch(tiny_model, tmp_path, monkeypatch):
    req = parse_request(args(tiny_model, tmp_path, "--compile-mode", "max-autotune-no-cudagraphs"))
    assert req.compile and req.compile_mode == "max-autotune-no-cudagraphs"
    seen = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    pipeline.load_denoiser(req, locate(tiny_model), torch.device("cpu"))
    assert seen and all(kw == {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"} for kw in seen)


def test_compile_flag_reaches_the_loaded_model(tiny_model, tmp_path):
    req = parse_request(args(tiny_model, tmp_path, "--compile"))
    assert req.compile and not parse_request(args(tiny_model, tmp_path)).compile
    model = pipeline.load_denoiser(req, locate(tiny_model), torch.device("cpu"))
    assert all(b._compiled_call_impl is not None for b in model.double_blocks)


# --------------------------------------------------------------------------- --teacache-thresh
def test_teacache_flag_end_to_end_logs_skipped_steps(tiny_model, tmp_path, capfd):
    assert main(args(tiny_model, tmp_path / "out", "--teacache-thresh", "1000")) == 0
    err = capfd.readouterr().err
    assert "TeaCache prompt: computed 2 of 4 steps (threshold 1000); skipped steps: 1, 2" in err
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 1


@pytest.mark.parametrize("value", ["-0.1", "nan", "x"])
def test_bad_teacache_threshold_is_exit_2(tmp_path, capsys, value):
    assert main(args(tmp_path, tmp_path / "out", "--teacache-thresh", value)) == 2
    assert capsys.readouterr().err.startswith("error: --teacache-thresh:")


# --------------------------------------------------------------------------- analytic FLOPs
@pytest.mark.parametrize(
    "cfg",
    [TINY_DIT, TINY_DIT.replace(guidance_embed=False, mlp_ratio=2.0, depth_double=1, depth_single=3, depth_refiner=1)],
)
def test_analytic_flops_equal_counted_flops(cfg):
    """dit_flops = what FlopCounterMode counts (matmuls, conv, and attention via the math SDPA kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from hyvideo.flops import dit_flops

    model = random_dit(cfg, seed=5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 6, 8, generator=g)
    mask = torch.tensor([[1] * 5 + [0] * 4])  # 5 valid text tokens: padding is dropped
    states = torch.randn(1, 9, cfg.text_states_dim, generator=g)
    guidance = torch.tensor([6000.0]) if cfg.guidance_embed else None
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500.0]), states, mask, torch.randn(1, cfg.text_pool_dim, generator=g), guidance)
    counted = counter.get_flop_counts()["Global"]
    flops = dit_flops(cfg, 3 * 3 * 4, 5)
    assert counter.get_total_flops() == flops.total
    assert counted[torch.ops.aten.bmm] == flops.attention
    assert dit_flops(cfg, 36, 5, batch=2).total == 2 * flops.total
