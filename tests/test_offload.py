"""Offload levels: identical outputs, hook ordering, and the most blocks resident at once (instrumented on CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hyvideo.offload import BlockStreamer, ModelOffload, Resident, apply_offload, stream_dit_blocks
from hyvideo.quantization import FP8, fp8_layer_names, quantize_dit
from hyvideo.tiny import TINY_DIT, random_dit

CPU = torch.device("cpu")
DEEP = TINY_DIT.replace(depth_double=3, depth_single=4)


def dit_inputs(cfg=TINY_DIT, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 16, 3, 8, 12, generator=g),
        torch.tensor([500.0]),
        torch.randn(1, 7, cfg.text_states_dim, generator=g),
        torch.ones(1, 7, dtype=torch.long),
        torch.randn(1, cfg.text_pool_dim, generator=g),
        torch.tensor([6000.0]),
    )


def is_meta(module: nn.Module) -> bool:
    return all(t.is_meta for t in (*module.parameters(), *module.buffers()))


@pytest.mark.parametrize("window", [1, 2, 3])
def test_block_streaming_identical_ordered_and_bounded(window):
    model = random_dit(DEEP, 0)
    inp = dit_inputs(DEEP)
    ref = model(*inp)
    blocks = [*model.double_blocks, *model.single_blocks]
    n = len(blocks)
    streamer = stream_dit_blocks(model, CPU, window)
    assert all(is_meta(b) for b in blocks)  # nothing resident before the first forward
    seen: list[int] = []  # resident count observed inside every block's forward
    for b in blocks:
        b.register_forward_pre_hook(lambda *_: seen.append(streamer.resident()))
    for step in range(2):  # two denoising steps: prefetch wraps from the last block to block 0
        out = model(*inp)
        assert torch.equal(out, ref), step
    assert max(seen) <= window and streamer.max_resident <= window
    assert streamer.max_resident == min(window, n)
    runs = [i for kind, i in streamer.trace if kind == "run"]
    assert runs == list(range(n)) * 2
    for k, (kind, i) in enumerate(streamer.trace):
        before = streamer.trace[:k]
        if kind == "run":  # loaded since its last eviction
            assert ("load", i) in before
            last_load = max(j for j, e in enumerate(before) if e == ("load", i))
            assert ("evict", i) not in before[last_load:]
        if kind == "evict":
            assert before[-1] == ("run", i) or before[-1][0] == "load"  # right after it ran (and prefetches)
    # after a forward only the prefetched blocks are resident; the rest are meta placeholders
    assert sum(not is_meta(b) for b in blocks) == min(window - 1, n)
    streamer.remove()
    assert not any(is_meta(b) for b in blocks)
    assert torch.equal(model(*inp), ref)


def test_block_streaming_with_fp8_streams_fp8_bytes():
    model = quantize_dit(random_dit(DEEP, 1))
    inp = dit_inputs(DEEP)
    ref = model(*inp)
    blocks = [*model.double_blocks, *model.single_blocks]
    before = sum(t.nbytes for b in blocks for t in (*b.parameters(), *b.buffers()))
    streamer = stream_dit_blocks(model, CPU, 2)
    assert torch.equal(model(*inp), ref)
    assert sum(r.nbytes() for r in streamer.blocks) == before  # the host copy is the fp8 model, not a float one
    fp8_host = [h for r in streamer.blocks for h in r.host if h.dtype == FP8]
    assert len(fp8_host) == len(fp8_layer_names(model))  # every block Linear weight travels as fp8


def test_resident_meta_when_evicted_fails_loudly():
    lin = nn.Linear(4, 3)
    r = Resident(lin, CPU)
    with pytest.raises((RuntimeError, NotImplementedError)):
        lin(torch.randn(2, 4))  # not loaded: meta weights cannot silently compute
    r.load()
    y = lin(torch.randn(2, 4))
    assert y.shape == (2, 3)
    r.evict()
    assert is_meta(lin)


def test_model_offload_one_component_at_a_time():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    x = torch.randn(3, 8)
    ref_a, ref_b = a(x), b(x)
    off = ModelOffload(CPU)
    off.add("a", a)
    off.add("b", b)
    assert is_meta(a) and is_meta(b)
    states = []
    a.register_forward_pre_hook(lambda *_: states.append(("a", is_meta(a), is_meta(b))))
    b.register_forward_pre_hook(lambda *_: states.append(("b", is_meta(a), is_meta(b))))
    assert torch.equal(a(x), ref_a) and torch.equal(a(x), ref_a)
    assert torch.equal(b(x), ref_b)
    assert torch.equal(a(x), ref_a)
    assert states == [("a", False, True), ("a", False, True), ("b", True, False), ("a", False, True)]
    assert off.trace == [("load", "a"), ("evict", "a"), ("load", "b"), ("evict", "b"), ("load", "a")]
    off.offload()
    assert is_meta(a) and is_meta(b)


@pytest.mark.parametrize("level", ["none", "model", "block"])
def test_apply_offload_levels_identical(level):
    model = random_dit(TINY_DIT, 2)
    inp = dit_inputs()
    ref = copy.deepcopy(model)(*inp)
    wrapped = apply_offload(model, level, CPU)
    assert torch.equal(wrapped(*inp), ref)
    assert torch.equal(wrapped(*inp), ref)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        BlockStreamer([nn.Linear(2, 2)], CPU, window=0)


def test_pipeline_offload_levels_give_identical_latents(tmp_path):
    from hyvideo import pipeline
    from hyvideo.checkpoints.layout import locate
    from hyvideo.cli import parse_request
    from hyvideo.tiny import write_tiny_model

    base = write_tiny_model(tmp_path / "model", seed=3)
    paths = locate(base)

    def req(*extra: str):
        return parse_request(
            ["--model-base", str(base), "--prompt", "a cat", "--video-size", "64", "96", "--video-length", "9",
             "--infer-steps", "2", "--seed", "7", "--save-path", str(tmp_path / "o"), "--precision", "fp32",
             "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu", *extra]
        )  # fmt: skip

    cond, uncond = pipeline.encode_text(req(), paths, CPU)

    def latents(r) -> torch.Tensor:
        return pipeline.denoise(pipeline.load_denoiser(r, paths, CPU), cond, uncond, r, r.seed, CPU)

    ref = latents(req())
    assert req("--use-cpu-offload").offload == "model"  # the official flag keeps its meaning
    for extra in (["--offload", "model"], ["--offload", "block"], ["--use-cpu-offload"]):
        r = req(*extra)
        model = pipeline.load_denoiser(r, paths, CPU)
        assert isinstance(model._offload, BlockStreamer if r.offload == "block" else ModelOffload)
        assert torch.equal(pipeline.denoise(model, cond, uncond, r, r.seed, CPU), ref), extra
