"""Offload levels: identical outputs, hook ordering, and the most blocks resident at once (instrumented on CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hyvideo import offload
from hyvideo.offload import BlockStreamer, ModelOffload, Resident, acquire, apply_offload, stream_dit_blocks
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


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.bfloat16], ids=["fp32-file", "bf16-file"])
def test_pipeline_offload_levels_give_identical_latents(tmp_path, monkeypatch, file_dtype):
    from hyvideo import pipeline
    from hyvideo.checkpoints.layout import locate
    from hyvideo.cli import parse_request
    from hyvideo.modules import text_encoders
    from hyvideo.tiny import write_tiny_model

    base = write_tiny_model(tmp_path / "model", seed=3)
    paths = locate(base)
    if file_dtype != torch.float32:  # a bf16 checkpoint run in fp32: cast at load (none, model) or per block (block)
        sd = torch.load(paths.dit, weights_only=True)
        torch.save({k: {n: t.to(file_dtype) for n, t in v.items()} for k, v in sd.items()}, paths.dit)

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
    # --offload block streams the LLM's layers too (docs/DESIGN.md §23): its text states are the resident ones
    made: list[BlockStreamer] = []

    def record(*args, **kwargs) -> BlockStreamer:
        made.append(offload.stream_layers(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(text_encoders, "stream_layers", record)
    streamed_cond, streamed_uncond = pipeline.encode_text(req("--offload", "block"), paths, CPU)
    assert streamed_uncond is None and torch.equal(streamed_cond.llm_states, cond.llm_states)
    assert len(made) == 1 and ("run", 0) in made[0].trace  # the streamer ran the layer (tiny LLM: 1 after skip 2)
    assert not made[0].modules[0]._forward_pre_hooks  # and encode_text freed the encoder: hooks removed
    for extra in (["--offload", "model"], ["--offload", "block"], ["--use-cpu-offload"]):
        r = req(*extra)
        model = pipeline.load_denoiser(r, paths, CPU)
        assert isinstance(model._offload, BlockStreamer if r.offload == "block" else ModelOffload)
        text = (streamed_cond, streamed_uncond) if r.offload == "block" else (cond, uncond)
        assert torch.equal(pipeline.denoise(model, *text, r, r.seed, CPU), ref), extra


# --- streaming from a memory-mapped checkpoint on the CPU (host RAM holds a window of blocks) ---

WIDE = TINY_DIT.replace(hidden_size=256, heads=4, rope_axes=(16, 24, 24), depth_double=2, depth_single=3)


def present_bytes(t: torch.Tensor) -> int:
    """Bytes of the whole pages inside `t` that are resident now (/proc/self/pagemap bit 63)."""
    from hyvideo.offload import PAGE, _whole_pages

    start, end = _whole_pages(t)
    if end <= start:
        return 0
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        e = torch.frombuffer(bytearray(f.read((end - start) // PAGE * 8)), dtype=torch.int64)
    return int((e < 0).sum()) * PAGE


def saved_dit(tmp_path, dtype: torch.dtype = torch.float32, seed: int = 4):
    from hyvideo.checkpoints.dit import save_dit_official

    return save_dit_official(random_dit(WIDE, seed).to(dtype), tmp_path / f"dit-{dtype}".replace("torch.", ""))


FAULT_AROUND = 2 * 64 * 1024  # both ends of a block
linux_only = pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="/proc/self/pagemap")


@linux_only
@pytest.mark.parametrize("file_dtype", [torch.float32, torch.bfloat16], ids=["fp32-file", "bf16-file"])
def test_cpu_streaming_returns_block_pages_and_is_exact(tmp_path, file_dtype):
    from hyvideo.checkpoints.dit import load_dit

    path = saved_dit(tmp_path, file_dtype)
    inp = dit_inputs(WIDE)
    ref = load_dit(path, WIDE, dtype=torch.float32)(*inp)  # cast once at load, no offload
    model = load_dit(path, WIDE)  # blocks stay memory-mapped in the file's dtype
    streamer = stream_dit_blocks(model, CPU, 2, dtype=torch.float32)
    mapped = sum(h.nbytes for r in streamer.blocks for h in r.host)
    seen: list[int] = []  # bytes of block pages resident while each block runs
    for b in [*model.double_blocks, *model.single_blocks]:
        b.register_forward_pre_hook(
            lambda *_: seen.append(sum(present_bytes(h) for r in streamer.blocks for h in r.host))
        )
    for step in range(2):
        assert torch.equal(model(*inp), ref), step  # bit for bit: the same cast, per block instead of at load
        evicted = [r for r in streamer.blocks if not r.on_device]
        # evicted blocks' pages are gone, but for the kernel's fault-around (<= 64 KiB mapped around a fault)
        # reaching across a block boundary while the neighbour loads
        assert evicted and all(sum(present_bytes(h) for h in r.host) <= FAULT_AROUND for r in evicted)
    largest = max(sum(h.nbytes for h in r.host) for r in streamer.blocks)
    assert max(seen) <= 2 * largest + len(streamer.blocks) * FAULT_AROUND < mapped  # a window, not the whole file
    assert all(h.dtype == file_dtype for r in streamer.blocks for h in r.host if h.is_floating_point())
    assert all(p.dtype == torch.float32 for p in model.img_in.parameters())


@linux_only
def test_drop_pages_leaves_private_memory_alone(tmp_path):
    from hyvideo.offload import drop_pages

    anon = torch.arange(1 << 20, dtype=torch.float32)
    assert drop_pages(anon) == 0 and torch.equal(anon, torch.arange(1 << 20, dtype=torch.float32))
    path = tmp_path / "t.pt"
    torch.save({"w": torch.ones(1 << 20)}, path)
    w = torch.load(path, mmap=True, weights_only=True)["w"]
    assert float(w.sum()) == 1 << 20
    assert drop_pages(w) > 0 and present_bytes(w) == 0 and float(w.sum()) == 1 << 20  # re-read from the file
    w[1000:2000] = 5.0  # copy-on-write: these pages are private now
    assert drop_pages(w) == 0 and float(w[1500]) == 5.0


@linux_only
def test_bf16_file_cast_at_load_holds_one_copy(tmp_path):
    """bf16 file -> fp32 model: peak RSS grows by the fp32 copy, not by the fp32 copy plus the mapped file."""
    import subprocess
    import sys

    from hyvideo.checkpoints.dit import save_dit_official

    cfg = WIDE.replace(hidden_size=512, heads=8, depth_double=2, depth_single=4)
    path = save_dit_official(random_dit(cfg, 0).to(torch.bfloat16), tmp_path / "bf16")
    fp32 = sum(p.numel() for p in random_dit(cfg, 0).parameters()) * 4
    code = (
        "import sys, torch\n"
        "from hyvideo.checkpoints.dit import load_dit\n"
        "import hyvideo.offload  # imported by load_dit's cast (it brings torch._dynamo): not part of the weights\n"
        "def kb(k): return int([l for l in open('/proc/self/status') if l.startswith(k)][0].split()[1]) * 1024\n"
        "before = kb('VmRSS')\n"
        "m = load_dit(sys.argv[1], dtype=torch.float32)\n"
        "print(kb('VmHWM') - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.split()[-1])
    assert growth < 1.2 * fp32, (growth / fp32, fp32)  # holding the file too would be 1.5x


def test_model_offload_loads_from_any_entry_point():
    """TeaCache and sequence parallelism drive the DiT through embed / run_blocks, never its forward: the first
    embedder that runs loads the component; `acquire` loads it for a reader of one submodule; `remove` forgets it."""
    model = random_dit(TINY_DIT, 2)
    ref = copy.deepcopy(model)
    off = ModelOffload(CPU)
    off.add("dit", model)
    inp = dit_inputs()
    img, txt, vec, ctx = model.embed(*inp)
    assert off.trace == [("load", "dit")]
    assert torch.equal(model.run_blocks(img, txt, vec, ctx), ref.run_blocks(*ref.embed(*inp)))
    off.offload()
    acquire(model.double_blocks[0].img_mod)
    assert off.trace[-1] == ("load", "dit") and not is_meta(model)
    off.remove()
    acquire(model.double_blocks[0])  # no longer managed: nothing happens
    assert off.trace[-1] == ("load", "dit") and len(off.trace) == 3


def test_block_streamer_acquire_loads_one_block_within_the_window():
    """acquire(block 0's modulation), as TeaCache does before the blocks run: block 0 loads once, runs first, and
    the window still holds."""
    model = random_dit(DEEP, 0)
    ref = copy.deepcopy(model)(*dit_inputs(DEEP))
    streamer = stream_dit_blocks(model, CPU, window=2)
    block = model.double_blocks[0]
    acquire(block.img_mod)  # a submodule of a streamed block: its whole block loads
    assert streamer.trace == [("load", 0)] and not is_meta(block) and streamer.resident() == 1
    acquire(block)
    assert streamer.trace == [("load", 0)]  # already resident
    assert torch.equal(model(*dit_inputs(DEEP)), ref)
    assert streamer.trace[:3] == [("load", 0), ("run", 0), ("load", 1)] and streamer.max_resident == 2


def test_pinned_block_streaming_shares_one_slab_pool(monkeypatch):
    """Pinned block copies go into one SlabPool shared by every block (slabs fill across blocks), sized for the
    largest tensor in the compute dtype; unpinned streaming (the CPU) uses no pool."""
    seen = []

    class Recorder:
        def __init__(self, module, device, pin=None, dtype=None, release=None, pool=None):
            seen.append(pool)

    monkeypatch.setattr(offload, "Resident", Recorder)
    model = random_dit(TINY_DIT, seed=1)
    blocks = [*model.double_blocks, *model.single_blocks]
    offload.BlockStreamer(blocks, torch.device("cpu"), pin=True, dtype=torch.float16)
    assert len(seen) == len(blocks) and seen[0] is not None and all(p is seen[0] for p in seen)
    largest = max(p.numel() for b in blocks for p in b.parameters()) * 2  # fp16 bytes
    assert seen[0].slab == min(2**30, 1 << (8 * largest - 1).bit_length())
    seen.clear()
    offload.BlockStreamer(blocks, torch.device("cpu"))
    assert seen == [None] * len(blocks)


def test_stream_blocks_moves_every_tensor_outside_the_blocks():
    """`stream_blocks` on a model whose blocks sit deep in the tree (a language model inside a multimodal model):
    tensors on the modules above the blocks (a parameter, an integer buffer) and whole subtrees without a block move
    to the device, cast to `dtype` where floating point; the blocks stream and the output equals the plain model's."""

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
            self.scale = nn.Parameter(torch.full((8,), 0.5))
            self.register_buffer("steps", torch.arange(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.embed(x)
            for i, layer in zip(self.steps.tolist(), self.layers, strict=True):
                x = layer(x) * self.scale + i
            return x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = nn.Linear(4, 4)
            self.inner = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(self.tower(x))

    torch.manual_seed(0)
    model, x = Outer(), torch.randn(2, 4)
    ref = copy.deepcopy(model).to(torch.float64)(x.double())
    streamer = offload.stream_blocks(model, list(model.inner.layers), CPU, dtype=torch.float64)
    assert model._offload is streamer and all(is_meta(b) for b in model.inner.layers)
    assert model.inner.scale.dtype == torch.float64 and not model.inner.scale.requires_grad
    assert model.inner.steps.dtype == torch.int64 and model.tower.weight.dtype == torch.float64
    assert torch.equal(model(x.double()), ref)
    assert [i for op, i in streamer.trace if op == "run"] == [0, 1, 2]
    offload.unstream(model)
    assert not hasattr(model, "_offload") and not any(b._forward_pre_hooks for b in model.inner.layers)
    assert torch.equal(model(x.double()), ref)  # a plain host model again
