"""--compile: regional torch.compile (per block, or the block loop as one region in the CUDA-graph modes), its
numbers, its interplay with offload, and the CLI wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.mutation_guard import GenerationTracker

from hyvideo import pipeline
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import main, parse_request
from hyvideo.compile import compile_blocks, compile_region, uses_cuda_graphs
from hyvideo.offload import apply_offload
from hyvideo.request import UsageError, _check_compile_mode
from hyvideo.teacache import TeaCache
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


def fresh_tiny_dit() -> tuple[torch.nn.Module, tuple]:
    """A tiny random DiT and one forward's inputs, with dynamo's caches and counters reset."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = random_dit(TINY_DIT, seed=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    states, pooled = torch.randn(1, 5, TINY_DIT.text_states_dim, generator=g), torch.randn(1, 32, generator=g)
    return model, (x, torch.tensor([700.0]), states, torch.ones(1, 5, dtype=torch.long), pooled, torch.tensor([6e3]))


def compiled_entries(fn) -> tuple[object, int]:
    """fn()'s result and how many times it entered a compiled function: a CUDA-graph tree starts a new generation
    (freeing the previous generation's outputs) on each entry, so this is the count that must be 1 per model call
    in the CUDA-graph modes."""
    before = GenerationTracker.generation
    out = fn()
    return out, GenerationTracker.generation - before


# --------------------------------------------------------------------------- what gets compiled
def test_region_choice_follows_cuda_graphs():
    """torch's own table of modes decides: the modes that replay CUDA graphs compile the block loop as one region."""
    assert [uses_cuda_graphs(m) for m in ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")] \
        == [False, False, True, True]  # fmt: skip
    assert compile_region("default") == compile_region("max-autotune-no-cudagraphs") == "blocks"
    assert compile_region("reduce-overhead") == compile_region("max-autotune") == "loop"
    assert compile_region("default", {"triton.cudagraphs": True}) == "loop"
    assert compile_region("reduce-overhead", {"triton.cudagraphs": False}) == "blocks"


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_blocks_match_eager(mode):
    """Regional torch.compile (inductor, CPU) on the tiny DiT: same output within fp32 tolerance, same keys.
    "reduce-overhead" is the CUDA-graph mode: on the CPU inductor skips the graphs, the compiled math and the
    region (one compiled entry per model call, also through TeaCache, which calls run_blocks) are tested."""
    model, inputs = fresh_tiny_dit()
    keys = list(model.state_dict())
    blocks = [*model.double_blocks, *model.single_blocks]
    with torch.no_grad():
        eager = model(*inputs)
        compile_blocks(model, mode=mode)
        compiled, entries = compiled_entries(lambda: model(*inputs))
        _, again = compiled_entries(lambda: model(*inputs))
        cache = TeaCache(model, 1e9, 3)
        _, cached = compiled_entries(lambda: [cache(*inputs) for _ in range(3)])  # steps 0 and 2 compute
    if mode == "default":
        assert all(b._compiled_call_impl is not None for b in blocks)
        assert again == len(blocks)  # one entry per block: why the CUDA-graph modes need the loop as one region
    else:
        assert all(b._compiled_call_impl is None for b in blocks) and "run_blocks" in vars(model)
        assert entries == again == 1 and cached == 2
    assert model.txt_in._compiled_call_impl is None  # only the repeated blocks
    assert list(model.state_dict()) == keys
    assert (compiled - eager).abs().max().item() <= 1e-5


@pytest.mark.parametrize("level", ["block", "model"])
def test_compiled_blocks_with_offload_match_eager(level):
    """--compile with --offload block / model: the offload hooks run eagerly around the compiled blocks (no
    recompiles per block index), every streamed block is loaded and evicted in order, and the output equals eager."""
    model, inputs = fresh_tiny_dit()
    with torch.no_grad():
        eager = model(*inputs)
        apply_offload(model, level, torch.device("cpu"))
        compile_blocks(model)
        outs = [model(*inputs) for _ in range(2)]
    if level == "block":
        n = len(model.double_blocks) + len(model.single_blocks)
        runs = [i for kind, i in model._offload.trace if kind == "run"]
        assert runs == list(range(n)) * 2
    else:
        assert model._offload.trace == [("load", "dit")] and model._offload.eager
    assert all((o - eager).abs().max().item() <= 1e-5 for o in outs)
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] <= 4, dict(frames)  # double, single, last single (keep): no per-block-index frames


# --------------------------------------------------------------------------- the CLI
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
