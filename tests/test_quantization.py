"""hyvideo.quantization: fp8 weight storage (quantisation math, real fp8 memory, closeness to the float model, the
official file pair) and the fp8-compute (`torch._scaled_mm`) path against the upcast path, under a stand-in that
enforces CUDA's `_scaled_mm` contract for every compute precision."""

from __future__ import annotations

import copy

import pytest
import torch
from cuda_standins import CudaContractError, strict_scaled_mm
from torch import nn

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.checkpoints.dit import save_dit_official
from hyvideo.quantization import (
    FP8,
    FP8_MAX,
    FP8Linear,
    dequantize_weight,
    emulated_scaled_mm,
    enable_fp8_compute,
    fp8_bytes,
    fp8_layer_names,
    fp8_map_path,
    fp8_matmul,
    load_dit_fp8,
    quantize_dit,
    quantize_weight,
    save_fp8_official,
)
from hyvideo.tiny import TINY_DIT, random_dit

# Relative L2 error of the DiT output vs the fp32 model, measured on TINY_DIT seeds 0-3: fp8 weights 0.033-0.037
# (bf16 compute alone: 0.009-0.010; fp8 compute: 0.041-0.051). The bound leaves 2x headroom; a missing scale or a
# wrong layer gives errors >> 1.
FP8_OUTPUT_TOL = 0.1


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


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantize_weight_round_trip(granularity):
    w = torch.randn(64, 32) * torch.logspace(-2, 1, 64)[:, None]  # rows spanning 3 decades
    w8, s = quantize_weight(w, granularity)
    assert w8.dtype == FP8 and w8.shape == w.shape and s.dtype == torch.float32
    assert s.shape == (() if granularity == "tensor" else (64, 1))
    assert w8.float().abs().max().item() == FP8_MAX  # the scale maps the (row) maximum onto 448
    back = dequantize_weight(w8, s, torch.float32)
    # e4m3 keeps 3 mantissa bits: every normal value within 2^-4 relative; subnormals within half a step (2^-10 s)
    assert ((back - w).abs() <= (w.abs() * 2**-4).clamp_min(2**-10 * s)).all()
    assert 0 < rel(back, w) < 0.04


def test_block_linears_are_really_fp8_in_memory():
    model = random_dit(TINY_DIT, 0)
    names = fp8_layer_names(model)
    # the official rule: every Linear under double_blocks / single_blocks, modulation Linears included
    assert "double_blocks.0.img_attn_qkv" in names and "double_blocks.1.txt_mod.linear" in names
    assert "single_blocks.0.linear1" in names and "single_blocks.1.modulation.linear" in names
    assert not any(n.startswith(("txt_in", "final_layer", "img_in", "time_in")) for n in names)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    before = sum(bf16.get_submodule(n).weight.nbytes for n in names)
    quantize_dit(model)
    for n in names:
        layer = model.get_submodule(n)
        assert isinstance(layer, FP8Linear) and layer.weight.dtype == FP8
        assert layer.weight.untyped_storage().nbytes() == layer.weight.numel()  # one byte per weight, no shadow copy
    fp8, _ = fp8_bytes(model)
    assert fp8 == before // 2
    assert set(model.state_dict()) == set(random_dit(TINY_DIT, 0).state_dict())  # official keys, scales not in it


@pytest.mark.parametrize("seed", [0, 3])
def test_fp8_output_close_to_float(seed):
    model = random_dit(TINY_DIT, seed)
    inp = dit_inputs()
    ref = model(*inp)
    fp8 = quantize_dit(copy.deepcopy(model)).to(torch.bfloat16)  # .to keeps fp8 tensors (float casts skip them)
    names = fp8_layer_names(fp8)
    assert all(fp8.get_submodule(n).weight.dtype == FP8 for n in names)
    out = fp8(*inp)
    assert out.dtype == torch.bfloat16
    assert 0 < rel(out, ref) < FP8_OUTPUT_TOL
    # mechanism: fp32 compute with fp8 weights == the float model holding the dequantised weights, up to float
    # summation order (a plain Linear after the single blocks' concatenation runs as two matmuls, an FP8Linear as one)
    q32 = quantize_dit(copy.deepcopy(model))
    deq = copy.deepcopy(model)
    for n in names:
        layer = q32.get_submodule(n)
        deq.get_submodule(n).weight.copy_(dequantize_weight(layer.weight, layer.scale, torch.float32))
    assert (q32(*inp) - deq(*inp)).abs().max().item() <= 1e-5


def test_official_fp8_pair_loads(tmp_path):
    model = random_dit(TINY_DIT, 2)
    path = save_fp8_official(model, tmp_path / "transformers")
    assert path.name == "mp_rank_00_model_states_fp8.pt"
    assert fp8_map_path(path).name == "mp_rank_00_model_states_fp8_map.pt"
    # the official layout: {"module": state dict}, fp8 block weights; map {module name: scalar scale}
    stored = torch.load(path, weights_only=True)["module"]
    scales = torch.load(fp8_map_path(path), weights_only=True)
    assert set(scales) == set(fp8_layer_names(model))
    assert all(s.dtype == torch.float32 and s.ndim == 0 for s in scales.values())
    assert stored["double_blocks.0.img_attn_qkv.weight"].dtype == FP8
    assert stored["final_layer.linear.weight"].dtype == torch.float32

    loaded = load_dit_fp8(path, TINY_DIT)
    assert all(loaded.get_submodule(n).weight.dtype == FP8 for n in scales)
    expected = quantize_dit(copy.deepcopy(model), "tensor")
    inp = dit_inputs()
    assert torch.equal(loaded(*inp), expected(*inp))

    # fp8 values saved in a wider dtype (bf16) load to the same model
    wide = {k: v.to(torch.bfloat16) if v.dtype == FP8 else v for k, v in stored.items()}
    torch.save({"module": wide}, tmp_path / "transformers" / "mp_rank_00_model_states_fp8.pt")
    again = load_dit_fp8(path, TINY_DIT)
    assert torch.equal(again(*inp), expected(*inp))


def test_fp8_map_errors(tmp_path):
    path = save_fp8_official(random_dit(TINY_DIT, 0), tmp_path)
    scales = torch.load(fp8_map_path(path), weights_only=True)
    del scales["single_blocks.1.linear2"]
    torch.save(scales, fp8_map_path(path))
    with pytest.raises(CheckpointError, match=r"missing layers \['single_blocks.1.linear2'\]"):
        load_dit_fp8(path, TINY_DIT)
    fp8_map_path(path).unlink()
    with pytest.raises(CheckpointError, match="scale map"):
        load_dit_fp8(path, TINY_DIT)


def test_bf16_checkpoint_quantized_on_the_fly_while_loading(tmp_path):
    model = random_dit(TINY_DIT, 4).to(torch.bfloat16)
    path = save_dit_official(model, tmp_path)
    loaded = load_dit_fp8(path, TINY_DIT, dtype=torch.bfloat16, granularity="channel")
    first = loaded.get_submodule("double_blocks.0.img_mlp.fc1")
    assert first.weight.dtype == FP8 and first.scale.shape == (first.out_features, 1)
    assert loaded.final_layer.linear.weight.dtype == torch.bfloat16
    inp = dit_inputs()
    assert rel(loaded(*inp), model.float()(*inp)) < FP8_OUTPUT_TOL


def test_quantize_after_weight_merge_and_not_twice():
    """A LoRA-style merge on the float model, then quantize: the fp8 model follows the merged weights."""
    model = random_dit(TINY_DIT, 5)
    inp = dit_inputs()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for n in fp8_layer_names(model):
            w = model.get_submodule(n).weight
            w += 0.5 * torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g) / w.shape[1]
    merged = model(*inp)
    q = quantize_dit(model)
    snapshot = {n: q.get_submodule(n).weight.clone() for n in fp8_layer_names(q)}
    quantize_dit(q)  # already fp8: left alone
    assert all(
        torch.equal(q.get_submodule(n).weight.view(torch.uint8), w.view(torch.uint8)) for n, w in snapshot.items()
    )
    assert rel(q(*inp), merged) < FP8_OUTPUT_TOL


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_compute_matches_upcast_path(granularity):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(2, 10, 64, generator=g)
    layer = FP8Linear.from_linear(lin, granularity)
    upcast = layer(x)
    # torch._scaled_mm runs on this CPU build; its result equals the fp32 emulation of its contract
    real = fp8_matmul(x, layer.weight, layer.scale, layer.bias)
    emulated = fp8_matmul(x, layer.weight, layer.scale, layer.bias, mm=emulated_scaled_mm)
    assert real.shape == upcast.shape == (2, 10, 48)
    assert torch.allclose(real, emulated, rtol=1e-5, atol=1e-5)
    # activation quantisation adds e4m3 rounding of x: same order as the weight error
    assert 0 < rel(real, upcast) < 0.06
    # the same through the layer flag, and in bf16
    enable_fp8_compute(layer)
    assert torch.allclose(layer(x), real)
    layer_bf16 = copy.deepcopy(layer)
    layer_bf16.bias.data = layer_bf16.bias.data.bfloat16()
    assert layer_bf16(x.bfloat16()).dtype == torch.bfloat16
    assert rel(layer_bf16(x.bfloat16()), upcast) < 0.08


def test_fp8_compute_whole_model_close():
    model = quantize_dit(random_dit(TINY_DIT, 0))
    inp = dit_inputs()
    upcast = model(*inp)
    assert enable_fp8_compute(model) == len(fp8_layer_names(model))
    fast = model(*inp)
    assert not torch.equal(fast, upcast)
    assert rel(fast, upcast) < FP8_OUTPUT_TOL


def test_pipeline_use_fp8_bf16_file_and_official_pair(tmp_path, capsys):
    from hyvideo import pipeline
    from hyvideo.checkpoints.layout import locate
    from hyvideo.cli import main, parse_request
    from hyvideo.tiny import write_tiny_model

    base = write_tiny_model(tmp_path / "model", seed=3)
    paths = locate(base)
    cpu = torch.device("cpu")
    args = ["--model-base", str(base), "--prompt", "a cat", "--video-size", "64", "96", "--video-length", "9",
            "--infer-steps", "2", "--seed", "7", "--save-path", str(tmp_path / "o"), "--precision", "fp32",
            "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu"]  # fmt: skip
    ref_req = parse_request(args)
    cond, uncond = pipeline.encode_text(ref_req, paths, cpu)

    def latents(r) -> torch.Tensor:
        model = pipeline.load_denoiser(r, paths, cpu)
        return pipeline.denoise(model, cond, uncond, r, r.seed, cpu), model

    ref, _ = latents(ref_req)
    on_the_fly, model = latents(parse_request([*args, "--use-fp8"]))
    assert all(model.get_submodule(n).weight.dtype == FP8 for n in fp8_layer_names(model))
    # fp32 compute isolates the fp8 storage error: measured 0.022 (bf16 compute alone moves these latents by 0.31)
    assert 0 < rel(on_the_fly, ref) < 0.1
    # the official pair beside the bf16 file, chosen with --dit-weight as the official script does
    fp8_file = save_fp8_official(pipeline.load_denoiser(ref_req, paths, cpu), paths.dit.parent)
    official, _ = latents(parse_request([*args, "--use-fp8", "--dit-weight", str(fp8_file)]))
    assert torch.equal(official, on_the_fly)  # per-layer scales both ways: the same fp8 weights
    # fp8 weights without --use-fp8 would be read as plain numbers: refused, one line, exit 2
    assert main([*args, "--dit-weight", str(fp8_file)]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --dit-weight: mp_rank_00_model_states_fp8")
    )
    # --fp8-compute needs --use-fp8 and fp8 matmul hardware
    assert main([*args, "--fp8-compute"]) == 2
    assert "--fp8-compute: needs --use-fp8" in capsys.readouterr().err
    assert main([*args, "--use-fp8", "--fp8-compute"]) == 2
    assert "--fp8-compute: needs a CUDA GPU" in capsys.readouterr().err


def test_quantizing_while_loading_drops_float_pages_safely(tmp_path):
    """Both layouts quantized while loading (float pages returned to the system layer by layer) give the same
    fp8 model as quantizing a float model in memory: no neighbouring tensor lost a page."""
    from hyvideo.checkpoints.dit import save_dit_diffusers

    model = random_dit(TINY_DIT, 6)
    official = save_dit_official(model, tmp_path / "official")
    diffusers = save_dit_diffusers(model, tmp_path / "diffusers")
    expected = quantize_dit(copy.deepcopy(model))
    inp = dit_inputs()
    want = expected(*inp)
    for path in (official, diffusers):
        loaded = load_dit_fp8(path, TINY_DIT)
        assert torch.equal(loaded(*inp), want), path
        for name, t in expected.state_dict().items():
            assert torch.equal(loaded.state_dict()[name].view(torch.uint8), t.view(torch.uint8)), (path, name)


# --- torch._scaled_mm's CUDA contract (tests/cuda_standins.strict_scaled_mm) ---


def _mm_args(M=32, K=64, N=48):
    a = torch.randn(M, K).to(FP8)
    b = torch.randn(N, K).to(FP8).t()  # (K, N) column-major, as FP8Linear passes W8.t()
    one = torch.ones((), dtype=torch.float32)
    return a, b, one


@pytest.mark.parametrize(
    "case, match",
    [
        ("bias_fp32_out", "Bias is not supported when out_dtype is set to Float32"),
        ("bias_fp32", "Bias must be BFloat16 or Half"),
        ("bias_fp16_for_bf16", "Bias must be BFloat16"),
        ("bias_bf16_for_fp16", "Bias must be Float16"),
        ("row_major_b", "column-major"),
        ("k_not_16", "divisible by 16"),
        ("n_not_16", "divisible by 16"),
        ("scale_fp16", "invalid scaling"),
        ("scale_vector", "invalid scaling"),
        ("out_int", "out_dtype"),
    ],
)
def test_strict_scaled_mm_rejects_what_cuda_rejects(case, match):
    a, b, one = _mm_args()
    kw = {"scale_a": one, "scale_b": one, "out_dtype": torch.bfloat16}
    if case == "bias_fp32_out":
        kw.update(bias=torch.zeros(48, dtype=torch.bfloat16), out_dtype=torch.float32)
    elif case == "bias_fp32":
        kw.update(bias=torch.zeros(48))
    elif case == "bias_fp16_for_bf16":
        kw.update(bias=torch.zeros(48, dtype=torch.float16))
    elif case == "bias_bf16_for_fp16":
        kw.update(bias=torch.zeros(48, dtype=torch.bfloat16), out_dtype=torch.float16)
    elif case == "row_major_b":
        b = b.contiguous()
    elif case == "k_not_16":
        a, b, _ = _mm_args(K=40)
    elif case == "n_not_16":
        a, b, _ = _mm_args(N=40)
    elif case == "scale_fp16":
        kw.update(scale_a=one.half())
    elif case == "scale_vector":
        kw.update(scale_b=torch.ones(48))
    elif case == "out_int":
        kw.update(out_dtype=torch.int32)
    with pytest.raises(CudaContractError, match=match):
        strict_scaled_mm(a, b, **kw)
    # the same call is accepted once the offending argument is made valid
    a, b, one = _mm_args()
    assert strict_scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16).shape == (32, 48)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_matmul_keeps_cuda_contract_in_every_precision(dtype, granularity):
    """--fp8-compute with --precision fp32 passed a bias with a float32 output, which CUDA rejects."""
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 48)
    layer = FP8Linear.from_linear(lin, granularity)
    x = torch.randn(3, 5, 64, generator=g).to(dtype)
    bias = layer.bias.detach().to(dtype)
    y = fp8_matmul(x, layer.weight, layer.scale, bias, mm=strict_scaled_mm)
    assert y.dtype == dtype and y.shape == (3, 5, 48)
    ref = fp8_matmul(x.float(), layer.weight, layer.scale, layer.bias.detach(), mm=emulated_scaled_mm)
    # bf16 / fp16 output rounding of the product and bias (2^-8 / 2^-11 relative); fp32: summation order only
    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-6}[dtype]
    assert rel(y, ref) < tol


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_fp8_compute_whole_model_under_cuda_contract(monkeypatch, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = quantize_dit(random_dit(TINY_DIT, 0)).to(dtype)
    inp = [t.to(dtype) if t.is_floating_point() else t for t in dit_inputs()]
    upcast = model(*inp)
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("out_dtype"))
        return strict_scaled_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    assert enable_fp8_compute(model) == len(fp8_layer_names(model))
    out = model(*inp)
    assert len(calls) >= len(fp8_layer_names(model)) and set(calls) == {dtype}
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel(out, upcast) < FP8_OUTPUT_TOL


def test_fp8_compute_only_for_kernel_shapes():
    """Layers whose dims are not multiples of 16 keep the dequantising path (CUDA's kernel refuses them)."""
    model = nn.Sequential(FP8Linear.from_linear(nn.Linear(64, 48)), FP8Linear.from_linear(nn.Linear(48, 40)))
    assert enable_fp8_compute(model) == 1
    assert model[0].fp8_compute and not model[1].fp8_compute
