"""The official HunyuanVideo 1.5 Python API (`HunyuanVideo_1_5_Pipeline`) on tiny random 1.5 models: the video of a
call equals what `sample_video.py` writes with the same settings (latents bit for bit), its tensor is built as the
official pipeline builds it, the official arguments map to our flags, and what we do not run is refused before any
model loads."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hyvideo import cli, hv15, io, pipeline, request
from hyvideo.api import Generator
from hyvideo.cli import parse_request
from hyvideo.pipelines.hunyuan_video_pipeline import (
    OFFICIAL_RANDOM_SEEDS,
    HunyuanVideo_1_5_Pipeline,
    HunyuanVideoPipelineOutput,
    official_seed,
)
from hyvideo.tiny import write_tiny15_model

PROMPT = 'A shop sign that reads "OPEN"'
NEGATIVE = "blurry"
FRAMES, STEPS = 5, 2
FP32 = dict(transformer_dtype=torch.float32, device="cpu")
FP32_OPTIONS = dict(vae_precision="fp32", text_encoder_precision="fp32", text_encoder_precision_2="fp32")
FP32_FLAGS = ["--precision", "fp32", "--vae-precision", "fp32", "--text-encoder-precision", "fp32",
              "--text-encoder-precision-2", "fp32", "--device", "cpu"]  # fmt: skip


@dataclass
class InferState:
    """The official hyvideo.commons.infer_state.InferState's fields and defaults (what generate.py passes)."""

    enable_sageattn: bool = False
    sage_blocks_range: list[int] | None = None
    enable_torch_compile: bool = False
    enable_cache: bool = False
    cache_type: str = "deepcache"
    no_cache_block_id: list[int] | None = None
    cache_start_step: int = 11
    cache_end_step: int = 45
    total_steps: int = 50
    cache_step_interval: int = 4
    use_fp8_gemm: bool = False
    quant_type: str = "fp8-per-token-sgl"
    include_patterns: list[str] = field(default_factory=lambda: ["double_blocks"])


@pytest.fixture(scope="module", autouse=True)
def small_buckets():
    """480p's size bucket base set to 64 px (16:9 -> 48x80) here and in the command line alike: the official API
    takes no height/width, and the real 480p bucket (480x848) takes minutes to decode on a CPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(request, "HV15_TARGET_SIZES", {"480p": 64, "720p": 96})
        yield


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """An official ckpts tree with transformer/{480p_t2v, 480p_i2v_step_distilled, 480p_i2v} (the same encoders and
    VAE): two image-to-video versions, as the release has."""
    root = tmp_path_factory.mktemp("tiny15") / "ckpts"
    for version in ("480p_t2v", "480p_i2v_step_distilled", "480p_i2v"):
        write_tiny15_model(root, "official", version, seed=2)
    return root


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "first.png"
    Image.fromarray((np.random.RandomState(3).rand(60, 100, 3) * 255).astype(np.uint8)).save(path)
    return path


def command_line(root: Path, save: Path, *extra: str) -> tuple[torch.Tensor, list[str]]:
    """sample_video.py (in process) with generate.py's spellings: (saved latents (1, 32, T', h, w), its argv)."""
    argv = ["--prompt", PROMPT, "--model-base", str(root), "--resolution", "480p", "--video_length", str(FRAMES),
            "--num_inference_steps", str(STEPS), "--negative_prompt", NEGATIVE, *FP32_FLAGS, "--sr", "false",
            "--save-path", str(save), "--save-latents", *extra]  # fmt: skip
    assert cli.main(argv) == 0
    (mp4,) = save.glob("*.mp4")
    return io.load_latents(io.latents_filename(mp4))[0], argv


def test_get_transformer_version_is_the_official_rule():
    get = HunyuanVideo_1_5_Pipeline.get_transformer_version
    assert get("480p", "t2v") == "480p_t2v"
    assert get("720p", "i2v", cfg_distilled=True) == "720p_i2v_distilled"
    assert get("720p", "t2v", sparse_attn=True) == "720p_t2v_distilled_sparse"  # sparse implies cfg-distilled
    assert get("480p", "i2v", True, True, True) == "480p_i2v_step_distilled"  # step distillation wins


def test_text_to_video_equals_the_command_line(tree, tmp_path):
    """generate.py's call on an official tree: the latents of sample_video.py bit for bit, and `videos` exactly the
    official pipeline's tensor: (decoded / 2 + 0.5).clamp(0, 1).cpu().float(), (1, 3, T, H, W)."""
    want, argv = command_line(tree, tmp_path / "cli", "--aspect_ratio", "16:9", "--seed", "7")
    req = parse_request(argv)
    decoded = pipeline.decode(pipeline.load_decoder(req, hv15.paths_of(req), torch.device("cpu")), want)
    official = (decoded.unsqueeze(0) / 2 + 0.5).clamp(0, 1).cpu().float()  # (1, 3, T, H, W)

    # generate.py's calls, with its keywords (offloading off: this machine has no CUDA)
    version = HunyuanVideo_1_5_Pipeline.get_transformer_version("480p", "t2v", False, False, False)
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(
        pretrained_model_name_or_path=tree, transformer_version=version, create_sr_pipeline=False,
        transformer_dtype=torch.float32, device=torch.device("cpu"), transformer_init_device=torch.device("cpu"),
        **FP32_OPTIONS,
    )  # fmt: skip
    pipe.apply_infer_optimization(infer_state=InferState(), enable_offloading=False, enable_group_offloading=False,
                                  overlap_group_offloading=True)  # fmt: skip
    assert (pipe.ideal_task, pipe.ideal_resolution, pipe.use_meanflow) == ("t2v", "480p", False)
    common = dict(enable_sr=False, prompt=PROMPT, aspect_ratio="16:9", num_inference_steps=STEPS,
                  sr_num_inference_steps=None, video_length=FRAMES, negative_prompt=NEGATIVE, seed=7,
                  prompt_rewrite=False, return_pre_sr_video=False)  # fmt: skip
    try:
        out = pipe(**common, output_type="pt")
        latents = pipe(**common, output_type="latent", return_dict=False)
        image = pipe(**{**common, "video_length": 1, "aspect_ratio": "9:16"}, output_type="np")
    finally:
        pipe.close()
    assert isinstance(out, HunyuanVideoPipelineOutput) and out.sr_videos is None and out[0] is out.videos
    assert out.videos.shape == (1, 3, FRAMES, 48, 80) and out.videos.dtype == torch.float32
    assert torch.equal(out.videos, official)
    assert isinstance(latents, torch.Tensor) and torch.equal(latents, want)
    assert isinstance(image.videos, np.ndarray) and image.videos.shape == (1, 3, 1, 80, 48)  # 9:16, one frame
    assert image.videos.dtype == np.float32 and image.videos.min() >= 0 and image.videos.max() <= 1


def test_image_to_video_equals_the_command_line(tree, image_path, tmp_path):
    """reference_image as a path and as a PIL image: sample_video.py --image_path's latents bit for bit, at the
    image's bucket (60x100 -> 48x80); the aspect ratio is ignored, as the official code ignores it with an image."""
    want, _ = command_line(tree, tmp_path / "cli", "--image_path", str(image_path), "--seed", "5")
    assert want.shape == (1, 32, 2, 3, 5)
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(tree, "480p_i2v", **FP32, **FP32_OPTIONS)
    common = dict(prompt=[PROMPT], aspect_ratio="1:1", video_length=FRAMES, num_inference_steps=STEPS, seed=5,
                  negative_prompt=NEGATIVE, enable_sr=False, prompt_rewrite=False, output_type="latent")  # fmt: skip
    try:
        by_path = pipe(**common, reference_image=str(image_path)).videos
        by_pil = pipe(**common, reference_image=Image.open(image_path)).videos
    finally:
        pipe.close()
    assert torch.equal(by_path, want) and torch.equal(by_pil, want)


def test_the_version_named_is_the_one_loaded(tree):
    """Of the tree's two image-to-video versions, each name gives its own DiT folder and the official defaults of
    its version (the step-distilled one: meanflow, 12 steps, guidance 1)."""
    base = HunyuanVideo_1_5_Pipeline.create_pipeline(tree, "480p_i2v", device="cpu")
    step = HunyuanVideo_1_5_Pipeline.create_pipeline(tree, "480p_i2v_step_distilled", device="cpu")
    assert base.request.hv15.paths.dit == tree / "transformer" / "480p_i2v"
    assert step.request.hv15.paths.dit == tree / "transformer" / "480p_i2v_step_distilled"
    assert not base.use_meanflow and step.use_meanflow and step.ideal_task == "i2v"
    assert (base.request.hv15.default_infer_steps, base.request.hv15.default_cfg_scale) == (50, 6.0)
    assert (step.request.hv15.default_infer_steps, step.request.hv15.default_cfg_scale) == (12, 1.0)


def test_a_diffusers_folder_holds_one_version(tmp_path):
    root = write_tiny15_model(tmp_path / "d", "diffusers", "480p_t2v", seed=1)
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(root, "480p_t2v", **FP32)
    assert pipe.ideal_task == "t2v" and pipe.request.hv15.version == "480p_t2v"
    with pytest.raises(ValueError, match=r"^transformer_version \(--cfg_distilled\): true, but --model-base .* holds"):
        HunyuanVideo_1_5_Pipeline.create_pipeline(root, "480p_t2v_distilled", **FP32)


def refused(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_what_we_do_not_run_is_refused_before_loading(tree, monkeypatch):
    """Each refusal is one line naming the official argument (and the command-line flag whose check it is)."""
    monkeypatch.setattr(Generator, "from_args", lambda *a: pytest.fail("the models were loaded"))
    create = HunyuanVideo_1_5_Pipeline.create_pipeline
    refused(lambda: create(tree, "480p_t2v", create_sr_pipeline=True), r"^create_sr_pipeline \(--sr\): .*not supp")
    refused(lambda: create(tree, "720p_t2v_distilled_sparse"), r"^transformer_version \(--sparse_attn\): SSTA")
    refused(lambda: create(tree, "720p_sr_distilled"), r"^transformer_version: '720p_sr_distilled' is not a rel")
    refused(lambda: create(tree, "720p_t2v"), r"^transformer_version \(--resolution\): .* no transformer/720p_t2v")
    refused(lambda: create(tree, "480p_t2v", transformer_dtype=torch.float64), r"^transformer_dtype: torch.float64")
    refused(lambda: create("tencent/HunyuanVideo-1.5", "480p_t2v"), r"^pretrained_model_name_or_path \(--model-b")
    refused(lambda: create(tree, "480p_t2v", cache_dir="/tmp"), r"^cache_dir: not an option of ours")
    refused(lambda: create(tree, "480p_t2v", precision="fp32"), r"^precision: set by create_pipeline's own")

    t2v, i2v = create(tree, "480p_t2v", device="cpu"), create(tree, "480p_i2v", device="cpu")
    ok = dict(prompt=PROMPT, aspect_ratio="16:9", video_length=FRAMES)
    refused(lambda: t2v(**ok, enable_sr=True), r"^enable_sr \(--sr\): the super-resolution stage .* not supported")
    refused(lambda: t2v(**ok, prompt_rewrite=True), r"^prompt_rewrite \(--rewrite\): .* not supported")
    refused(lambda: t2v(**ok, embedded_guidance_scale=6.0), r"^embedded_guidance_scale \(--embedded-cfg-scale\)")
    refused(lambda: t2v(**{**ok, "aspect_ratio": "16x9"}), r"^aspect_ratio \(--aspect_ratio\): give W:H")
    refused(lambda: t2v(**{**ok, "video_length": 6}), r"^video_length \(--video-length\): must be 4n\+1")
    refused(lambda: t2v(**{**ok, "prompt": ["a", "b"]}), r"^prompt: one prompt per call")
    refused(lambda: t2v(**{**ok, "prompt": " "}), r"^prompt \(--prompt\): give a non-empty")
    refused(lambda: t2v(**ok, generator=torch.Generator()), r"^generator: not supported; give seed=N")
    refused(lambda: t2v(**ok, output_type="pil"), r"^output_type: 'pil'; choose from pt, np, latent")
    refused(lambda: t2v(**ok, guidance_rescale=0.7), r"^guidance_rescale: not supported")
    refused(lambda: t2v(**ok, reference_image="cat.png"), r"^reference_image: given, but .* text-to-video")
    refused(lambda: i2v(**ok), r"^reference_image: missing, but .* image-to-video")
    refused(lambda: i2v(**ok, reference_image=Path(tree) / "none.png"), r"^reference_image: .*none.png")
    refused(lambda: i2v(**ok, reference_image=np.zeros((4, 4, 3))), r"^reference_image: a PIL image or the path")
    with pytest.raises(TypeError, match="unexpected keyword argument 'height'"):
        t2v(**ok, height=480)  # the official pipeline takes no size: aspect_ratio and the version's resolution


def test_official_seed():
    assert official_seed(0) == 0 and official_seed(42) == 42
    random.seed(0)
    drawn = [official_seed(None), official_seed(-1)]
    random.seed(0)
    assert drawn == [random.randint(*OFFICIAL_RANDOM_SEEDS) for _ in range(2)]
    assert all(100_000 <= s <= 999_999 for s in drawn)


def test_apply_infer_optimization_maps_to_our_flags(tree, monkeypatch):
    """InferState and the offload arguments become our flags (compile, fp8 weights); the feature cache, sage and
    CUDA-only settings get the command line's refusal on this CPU machine; new settings free the loaded models."""
    closed = []

    class Loaded:
        def close(self) -> None:
            closed.append(1)

    monkeypatch.setattr(Generator, "from_args", lambda *a: Loaded())
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(tree, "480p_t2v", device="cpu")
    assert not pipe.request.compile and pipe.request.offload == "none"
    pipe.apply_infer_optimization(InferState(enable_torch_compile=True, use_fp8_gemm=True,
                                             quant_type="fp8-per-tensor-weight-only"))  # fmt: skip
    assert pipe.request.compile and pipe.request.use_fp8 and not pipe.request.fp8_compute
    assert isinstance(pipe.sampler, Loaded) and not closed
    pipe.apply_infer_optimization(InferState(enable_torch_compile=True, use_fp8_gemm=True,
                                             quant_type="fp8-per-tensor-weight-only"))  # fmt: skip
    assert not closed  # the same settings keep the models
    pipe.apply_infer_optimization(InferState())
    assert closed == [1] and not pipe.request.compile
    refused(lambda: pipe.apply_infer_optimization(InferState(enable_cache=True)), r"^infer_state.enable_cache \(--")
    refused(lambda: pipe.apply_infer_optimization(InferState(enable_sageattn=True, sage_blocks_range=list(range(54)))),
            r"^infer_state.enable_sageattn \(--attn-backend\): sage needs")  # fmt: skip
    refused(lambda: pipe.apply_infer_optimization(InferState(use_fp8_gemm=True)), r"^infer_state.use_fp8_gemm \(--fp8")
    if not torch.cuda.is_available():  # generate.py's default: offloading, the models run on CUDA
        refused(lambda: pipe.apply_infer_optimization(enable_offloading=True), r"^enable_offloading: .* CUDA device")
    assert not pipe.request.compile  # a refused setting leaves the previous ones


def test_offloading_runs_on_cuda_as_the_official_convention(tree, monkeypatch):
    """generate.py's default passes device=cpu with enable_offloading: the models wait on the CPU and run on CUDA
    (offload model; group offloading streams the DiT's blocks). A CUDA device is made present for the checks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(tree, "480p_t2v", device=torch.device("cpu"))
    assert (pipe.request.device, pipe.request.offload) == ("cpu", "none")
    pipe.apply_infer_optimization(enable_offloading=True)
    assert (pipe.request.device, pipe.request.offload) == ("cuda", "model")
    pipe.apply_infer_optimization(enable_offloading=True, enable_group_offloading=True, overlap_group_offloading=False)
    assert (pipe.request.device, pipe.request.offload) == ("cuda", "block")
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(tree, "480p_t2v", device="cuda:0")
    pipe.apply_infer_optimization(enable_offloading=True)
    assert (pipe.request.device, pipe.request.offload) == ("cuda:0", "model")


def test_get_offloading_config():
    config = HunyuanVideo_1_5_Pipeline.get_offloading_config
    assert config(59 * 1024**3) == {"enable_offloading": True, "enable_group_offloading": True}
    assert config(80 * 1024**3) == {"enable_offloading": True, "enable_group_offloading": False}
    if not torch.cuda.is_available():
        refused(lambda: config(), r"^memory_limitation: no CUDA device")
