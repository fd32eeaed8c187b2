"""Speed features: attention backends (SageAttention/flash guards and packing), TeaCache and FLOPs wiring (--compile:
tests/test_compile.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hyvideo.cli import main
from hyvideo.modules.attention import KeyMask, attention, check_backend, kernel_for, sage_attention
from hyvideo.tiny import TINY_DIT, random_dit

PROMPT = "A cat walks on the grass, realistic style."


@pytest.fixture(scope="module")
def tiny_model(tiny_v1) -> Path:
    return tiny_v1("official", 3)  # the session's (conftest.py), read only


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
