"""HunyuanVideo 1.5 before anything loads: recognising the folder (family, layout, version) from config files only,
the official generate.py options (both spellings) on top of ours, the defaults per version, and every refusal
(exit 2, one line, nothing loaded or written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hyvideo import cli, pipeline
from hyvideo.checkpoints.layout import folder_version15, locate15, model_family, official_versions15
from hyvideo.choices import HV15_VERSIONS
from hyvideo.errors import CheckpointError, UsageError
from hyvideo.image import bucket_sizes
from hyvideo.request import HV15_NOTICE_SR, SampleRequest, hv15_bucket, validate

REPO = Path(__file__).resolve().parents[1]
T2V_CLASS, I2V_CLASS = "HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"


# --------------------------------------------------------------------------- config-only folders (no weights)
def _touch(folder: Path, *names: str, config: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def official_tree(root: Path, *versions: str, dit_config: dict | None = None) -> Path:
    """An official ckpts/ tree: every component's files present (empty), one transformer/<version>/ per version with
    the config keys the official DiT config has for it."""
    for v in versions:
        spec = HV15_VERSIONS[v]
        cfg = {"ideal_resolution": spec.resolution, "ideal_task": spec.task, "use_meanflow": spec.step_distilled}
        _touch(root / "transformer" / v, "diffusion_pytorch_model.safetensors", config={**cfg, **(dit_config or {})})
    _touch(root / "vae", "diffusion_pytorch_model.safetensors", config={})
    _touch(root / "text_encoder" / "llm", "model.safetensors.index.json", "tokenizer.json", config={})
    _touch(root / "text_encoder" / "byt5-small", "pytorch_model.bin", "tokenizer_config.json", config={})
    glyph = ("checkpoints/byt5_model.pt", "assets/color_idx.json", "assets/multilingual_10-lang_idx.json")
    _touch(root / "text_encoder" / "Glyph-SDXL-v2", *glyph)
    _touch(root / "vision_encoder" / "siglip" / "image_encoder", "model.safetensors", config={})
    _touch(root / "vision_encoder" / "siglip" / "feature_extractor", "preprocessor_config.json")
    _touch(root / "scheduler", "scheduler_config.json")
    return root


def diffusers_folder(
    root: Path, cls: str, target_size: int = 640, *, guidance: float = 6.0, shift: float = 5.0, meanflow: bool = False
) -> Path:
    """A diffusers HunyuanVideo 1.5 folder: model_index.json, the DiT config's target_size/task_type/use_meanflow,
    the guider's guidance_scale and the scheduler's shift."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    task = "i2v" if cls == I2V_CLASS else "t2v"
    dit = {"target_size": target_size, "task_type": task, "use_meanflow": meanflow, "in_channels": 65}
    _touch(root / "transformer", "diffusion_pytorch_model.safetensors", config=dit)
    _touch(root / "vae", "diffusion_pytorch_model.safetensors", config={})
    _touch(root / "text_encoder", "model.safetensors", config={})
    _touch(root / "tokenizer", "tokenizer.json")
    _touch(root / "text_encoder_2", "model.safetensors", config={})
    _touch(root / "tokenizer_2", "tokenizer_config.json")
    _touch(root / "scheduler")
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": shift}))
    _touch(root / "guider")
    (root / "guider" / "guider_config.json").write_text(json.dumps({"guidance_scale": guidance}))
    if cls == I2V_CLASS:
        _touch(root / "image_encoder", "model.safetensors", config={})
        _touch(root / "feature_extractor", "preprocessor_config.json")
    return root


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A portrait image (300 x 200), so its bucket differs from 16:9's."""
    path = tmp_path / "first.png"
    Image.fromarray((np.random.RandomState(0).rand(300, 200, 3) * 255).astype(np.uint8)).save(path)
    return path


def req(base: Path, tmp_path: Path, *extra: str, notes: list[str] | None = None) -> SampleRequest:
    argv = ["--prompt", "a cat", "--model-base", str(base), "--save-path", str(tmp_path / "out"), "--device", "cpu"]
    return validate(cli.build_parser().parse_args([*argv, *extra]), notes)


def refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """cli.main on `argv`: exit 2 and exactly one line on stderr, which is returned."""
    assert cli.main(argv) == 2, argv[8:]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- the family, the layout, the version
def test_model_family_from_the_folder_shape(tmp_path: Path) -> None:
    assert model_family(official_tree(tmp_path / "official", "480p_t2v")) == "1.5"
    assert model_family(diffusers_folder(tmp_path / "t2v", T2V_CLASS)) == "1.5"
    assert model_family(diffusers_folder(tmp_path / "i2v", I2V_CLASS)) == "1.5"
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanVideoPipeline"}))
    assert model_family(v1) == "v1"
    (tmp_path / "v1_official" / "hunyuan-video-t2v-720p").mkdir(parents=True)
    assert model_family(tmp_path / "v1_official") == "v1"
    with pytest.raises(CheckpointError, match="not a directory"):
        model_family(tmp_path / "missing")


def test_locate15_official_tree(tmp_path: Path) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_t2v", "480p_i2v_step_distilled")
    (base / "transformer" / "720p_sr_distilled").mkdir()  # super-resolution DiTs and other folders are not versions
    (base / "transformer" / "notes").mkdir()
    assert official_versions15(base) == ("480p_i2v_step_distilled", "480p_t2v")
    p = locate15(base, "480p_i2v_step_distilled")
    assert (p.layout, p.version, p.dit) == (
        "official",
        "480p_i2v_step_distilled",
        base / "transformer/480p_i2v_step_distilled",
    )
    assert (p.llm, p.llm_tokenizer) == (base / "text_encoder/llm",) * 2
    assert (p.byt5, p.byt5_tokenizer, p.glyph) == (
        base / "text_encoder/byt5-small", base / "text_encoder/byt5-small", base / "text_encoder/Glyph-SDXL-v2"
    )  # fmt: skip
    assert (p.vision, p.vision_processor) == (
        base / "vision_encoder/siglip/image_encoder", base / "vision_encoder/siglip/feature_extractor"
    )  # fmt: skip
    assert (p.vae, p.scheduler, p.guider) == (base / "vae", base / "scheduler", None)
    with pytest.raises(
        CheckpointError, match=r"choose a version of transformer/ \(found: 480p_i2v_step_distilled, 480p_t2v\)"
    ):
        locate15(base, None)
    with pytest.raises(
        CheckpointError, match=r"no transformer/720p_i2v \(versions found: 480p_i2v_step_distilled, 480p_t2v\)$"
    ):
        locate15(base, "720p_i2v")


def test_locate15_names_each_missing_component_in_one_line(tmp_path: Path) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_t2v", "480p_i2v")
    (base / "text_encoder/Glyph-SDXL-v2/checkpoints/byt5_model.pt").unlink()
    (base / "vision_encoder/siglip/feature_extractor/preprocessor_config.json").unlink()
    # text-to-video does not need the vision encoder
    with pytest.raises(CheckpointError) as e:
        locate15(base, "480p_t2v")
    assert str(e.value).endswith("missing " + str(base / "text_encoder/Glyph-SDXL-v2/checkpoints/byt5_model.pt"))
    with pytest.raises(CheckpointError) as e:
        locate15(base, "480p_i2v")
    assert "preprocessor_config.json" in str(e.value) and "\n" not in str(e.value)
    assert locate15(base, "480p_i2v", need_text=False).version == "480p_i2v"  # decoding latents: the VAE only
    (base / "vae/diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"vae/diffusion_pytorch_model\.safetensors"):
        locate15(base, "480p_i2v", need_text=False, need_dit=False)
    folder = diffusers_folder(tmp_path / "d", T2V_CLASS)
    (folder / "guider/guider_config.json").unlink()
    (folder / "tokenizer_2/tokenizer_config.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"missing .*tokenizer_2/tokenizer_config.json; .*guider/guider_config.json$"
    ):
        locate15(folder, None)


def test_official_dit_config_must_agree_with_the_folder_name(tmp_path: Path) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_i2v", dit_config={"ideal_task": "t2v"})
    with pytest.raises(CheckpointError, match="ideal_task is 't2v', but the folder name 480p_i2v says 'i2v'"):
        locate15(base, "480p_i2v")


@pytest.mark.parametrize(
    ("cls", "target", "guidance", "meanflow", "version"),
    [
        (T2V_CLASS, 640, 6.0, False, "480p_t2v"),
        (I2V_CLASS, 640, 6.0, False, "480p_i2v"),
        (T2V_CLASS, 960, 6.0, False, "720p_t2v"),
        (I2V_CLASS, 960, 1.0, False, "720p_i2v_distilled"),
        (T2V_CLASS, 640, 1.0, False, "480p_t2v_distilled"),
        (I2V_CLASS, 640, 1.0, True, "480p_i2v_step_distilled"),
    ],
)
def test_diffusers_version_from_its_configs(tmp_path, cls, target, guidance, meanflow, version) -> None:
    folder = diffusers_folder(tmp_path / "d", cls, target, guidance=guidance, meanflow=meanflow)
    assert folder_version15(folder) == version
    p = locate15(folder, None)
    assert (p.layout, p.version, p.dit, p.llm, p.llm_tokenizer) == (
        "diffusers", version, folder / "transformer", folder / "text_encoder", folder / "tokenizer"
    )  # fmt: skip
    assert (p.byt5, p.byt5_tokenizer, p.glyph, p.guider) == (
        folder / "text_encoder_2", folder / "tokenizer_2", None, folder / "guider"
    )  # fmt: skip
    i2v = cls == I2V_CLASS
    assert (p.vision, p.vision_processor) == (
        (folder / "image_encoder", folder / "feature_extractor") if i2v else (None, None)
    )


def test_diffusers_task_follows_the_pipeline_class(tmp_path: Path) -> None:
    """diffusers' converter writes task_type "i2v" for the 480p text-to-video weights; the class decides."""
    folder = diffusers_folder(tmp_path / "d", T2V_CLASS)
    config = folder / "transformer/config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "task_type": "i2v"}))
    assert folder_version15(folder) == "480p_t2v"


def test_diffusers_folder_that_is_no_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="target_size 1280 is not a released size"):
        folder_version15(diffusers_folder(tmp_path / "a", T2V_CLASS, 1280))
    with pytest.raises(CheckpointError, match=r"describes 720p_t2v_step_distilled .* not a released version"):
        folder_version15(diffusers_folder(tmp_path / "b", T2V_CLASS, 960, meanflow=True))
    with pytest.raises(CheckpointError, match="holds 480p_t2v, not 720p_t2v"):
        locate15(diffusers_folder(tmp_path / "c", T2V_CLASS), "720p_t2v")


# --------------------------------------------------------------------------- the version from the flags
@pytest.mark.parametrize(
    ("present", "flags", "version"),
    [
        (("480p_t2v",), [], "480p_t2v"),
        (("480p_t2v", "720p_t2v"), ["--resolution", "720p"], "720p_t2v"),
        (("480p_t2v", "480p_t2v_distilled"), [], "480p_t2v"),  # generate.py's default: not distilled
        (("480p_t2v", "480p_t2v_distilled"), ["--cfg_distilled"], "480p_t2v_distilled"),
        (("480p_t2v", "480p_t2v_distilled"), ["--cfg-distilled", "true"], "480p_t2v_distilled"),
        (("480p_t2v", "480p_t2v_distilled"), ["--cfg_distilled", "0"], "480p_t2v"),
        (("480p_t2v_distilled",), [], "480p_t2v_distilled"),  # the only text-to-video version there
        (("480p_i2v", "480p_i2v_step_distilled"), ["IMAGE"], "480p_i2v"),
        (("480p_i2v", "480p_i2v_step_distilled"), ["IMAGE", "--enable_step_distill"], "480p_i2v_step_distilled"),
        # step distillation wins over cfg distillation (generate.py's rule)
        (("480p_i2v_distilled", "480p_i2v_step_distilled"), ["IMAGE", "--enable_step_distill", "--cfg_distilled"],
         "480p_i2v_step_distilled"),
        (("480p_t2v", "720p_i2v", "720p_t2v_distilled_sparse"), ["IMAGE"], "720p_i2v"),
        (("480p_t2v", "720p_t2v", "720p_t2v_distilled_sparse"), ["--resolution", "720p"], "720p_t2v"),
    ],
)  # fmt: skip
def test_official_version_from_flags(tmp_path, image, present, flags, version) -> None:
    base = official_tree(tmp_path / "ckpts", *present)
    argv = [a for flag in flags for a in (["--image_path", str(image)] if flag == "IMAGE" else [flag])]
    r = req(base, tmp_path, *argv)
    assert (r.family, r.hv15.version, r.hv15.paths.version) == ("1.5", version, version)
    spec = HV15_VERSIONS[version]
    assert (r.task, r.resolution, r.step_distilled, r.meanflow, r.cfg_distilled) == (
        spec.task, spec.resolution, spec.step_distilled, spec.step_distilled, spec.cfg_distilled
    )  # fmt: skip
    assert r.i2v_mode == (spec.task == "i2v") and r.hv15.defaults_from == "version table"


@pytest.mark.parametrize(
    ("present", "flags", "message"),
    [
        (("480p_t2v", "480p_i2v"), ["--resolution", "720p"],
         "--resolution: {base} has no transformer/720p_t2v (versions found: 480p_i2v, 480p_t2v)"),
        (("480p_t2v",), ["--cfg_distilled"],
         "--model-base: {base} has no text-to-video version that fits the flags (versions found: 480p_t2v)"),
        (("480p_i2v",), [],
         "--model-base: {base} has no text-to-video version that fits the flags (versions found: 480p_i2v); add "
         "--image_path IMG for image-to-video"),
        (("480p_t2v", "720p_t2v"), [],
         "--resolution: {base} holds several text-to-video versions (480p_t2v, 720p_t2v); choose with --resolution "
         "480p or --resolution 720p"),
        (("480p_i2v_distilled", "480p_i2v_step_distilled"), ["IMAGE"],
         "--cfg_distilled: {base} holds several image-to-video versions (480p_i2v_distilled, "
         "480p_i2v_step_distilled); choose with --cfg_distilled or --enable_step_distill"),
        (("720p_i2v_distilled_sparse",), ["IMAGE"],
         "--model-base: {base}: only 720p_i2v_distilled_sparse fits, which needs SSTA sparse attention (H-series "
         "kernels): not supported; download a dense version"),
        (("480p_t2v",), ["--enable_step_distill"],
         "--model-base: {base} has no text-to-video version that fits the flags (versions found: 480p_t2v)"),
    ],
)  # fmt: skip
def test_official_version_refusals(tmp_path, image, capsys, present, flags, message) -> None:
    base = official_tree(tmp_path / "ckpts", *present)
    argv = [a for flag in flags for a in (["--image_path", str(image)] if flag == "IMAGE" else [flag])]
    out = tmp_path / "out"
    err = refused(
        ["--prompt", "x", "--model-base", str(base), "--save-path", str(out), "--device", "cpu", *argv], capsys
    )
    assert err == "error: " + message.format(base=base)
    assert not out.exists()


# --------------------------------------------------------------------------- the defaults per version
# (cfg, shift, steps) per version, as the official pipeline table and README give them (not read from our table)
OFFICIAL_DEFAULTS = {
    "480p_t2v": (6.0, 5.0, 50),
    "480p_i2v": (6.0, 5.0, 50),
    "720p_t2v": (6.0, 9.0, 50),
    "720p_i2v": (6.0, 7.0, 50),
    "480p_t2v_distilled": (1.0, 5.0, 50),
    "480p_i2v_distilled": (1.0, 5.0, 50),
    "720p_t2v_distilled": (1.0, 9.0, 50),
    "720p_i2v_distilled": (1.0, 7.0, 50),
    "480p_i2v_step_distilled": (1.0, 7.0, 12),
}


@pytest.mark.parametrize("version", sorted(OFFICIAL_DEFAULTS))
def test_official_defaults_per_version(tmp_path, image, version) -> None:
    base = official_tree(tmp_path / "ckpts", version)
    extra = ["--image_path", str(image)] if HV15_VERSIONS[version].task == "i2v" else []
    r = req(base, tmp_path, *extra)
    assert (r.cfg_scale, r.flow_shift, r.infer_steps) == OFFICIAL_DEFAULTS[version]
    assert (r.video_length, r.fps, r.seed, r.seed_was_random) == (121, 24, 123, False)
    assert r.neg_prompt == ("" if r.cfg_scale > 1 else None)  # generate.py's negative prompt is empty
    target = 640 if version.startswith("480p") else 960
    assert r.target_size == target
    if extra:  # the portrait image's bucket (diffusers' bucket code agrees here: test_buckets_against_diffusers)
        assert (r.height, r.width) == {640: (768, 512), 960: (1168, 784)}[target]
    else:  # 16:9
        assert (r.height, r.width) == {640: (480, 848), 960: (720, 1280)}[target]
    assert set(HV15_VERSIONS) - set(OFFICIAL_DEFAULTS) == {"720p_t2v_distilled_sparse", "720p_i2v_distilled_sparse"}


def test_diffusers_defaults_come_from_the_folder(tmp_path, image) -> None:
    folder = diffusers_folder(tmp_path / "d", I2V_CLASS, 960, guidance=4.5, shift=3.0)
    r = req(folder, tmp_path, "--image_path", str(image))
    assert (r.version, r.cfg_scale, r.flow_shift, r.infer_steps, r.defaults_from) == (
        "720p_i2v",
        4.5,
        3.0,
        50,
        "folder",
    )
    step = diffusers_folder(tmp_path / "s", I2V_CLASS, guidance=1.0, shift=7.0, meanflow=True)
    notes: list[str] = []
    r = req(step, tmp_path, "--image-path", str(image), notes=notes)
    assert (
        "HunyuanVideo 1.5 480p_i2v_step_distilled (a diffusers folder); defaults from the folder: cfg 1, shift 7, "
        "12 steps"
    ) in notes
    assert (r.version, r.cfg_scale, r.flow_shift, r.infer_steps, r.meanflow) == (
        "480p_i2v_step_distilled", 1.0, 7.0, 12, True
    )  # fmt: skip


def test_explicit_flags_win_over_the_version_defaults(tmp_path) -> None:
    base = official_tree(tmp_path / "ckpts", "720p_t2v")
    r = req(base, tmp_path, "--cfg-scale", "3", "--flow-shift", "2", "--num_inference_steps", "8", "--seed", "5",
            "--video_length", "33", "--negative_prompt", "blurry", "--aspect_ratio", "9:16")  # fmt: skip
    assert (r.cfg_scale, r.flow_shift, r.infer_steps, r.seed, r.video_length) == (3.0, 2.0, 8, 5, 33)
    assert (r.neg_prompt, r.height, r.width, r.aspect_ratio) == ("blurry", 1280, 720, (9, 16))
    r = req(base, tmp_path, "--video-size", "368", "640", "--seed-type", "random")
    assert (r.height, r.width, r.seed_was_random) == (368, 640, True)


def test_v1_requests_keep_their_defaults(tmp_path) -> None:
    (tmp_path / "v1").mkdir()
    r = req(tmp_path / "v1", tmp_path)
    assert (r.family, r.hv15, r.video_length, r.infer_steps, r.cfg_scale, r.seed_was_random) == (
        "v1", None, 129, 50, 1.0, True
    )  # fmt: skip
    with pytest.raises(AttributeError, match=r"'version' is a HunyuanVideo 1\.5 field; this request is v1"):
        r.version  # noqa: B018


@pytest.mark.parametrize("target", [640, 960])
def test_buckets_against_diffusers(target: int) -> None:
    """Our bucket is the official one: the nearest bucket ratio (rounded to 5 decimals) on either side. diffusers'
    1.5 image processor only looks on one side (portrait: ratios <= the picture's, landscape: >=), so it agrees
    except where the nearest bucket lies on the other side; there ours must be strictly nearer."""
    from diffusers.pipelines.hunyuan_video1_5.image_processor import (
        HunyuanVideo15ImageProcessor,
        generate_crop_size_list,
    )

    # the same buckets in the same order (ties go to the earlier one)
    assert bucket_sizes(target, 16) == generate_crop_size_list(target, 16)
    processor = HunyuanVideo15ImageProcessor(vae_scale_factor=16)
    differ = []
    for h, w in [(9, 16), (16, 9), (1, 1), (3, 4), (4, 3), (300, 200), (1080, 1920), (1, 10), (10, 1), (517, 923),
                 (923, 517), (2, 3), (3, 2), (720, 1280), (1280, 720)]:  # fmt: skip
        ours, theirs = hv15_bucket(target, h, w), tuple(processor.calculate_default_height_width(h, w, target))
        assert ours[0] % 16 == 0 and ours[1] % 16 == 0 and ours[0] * ours[1] <= target * target
        if ours != theirs:
            gap = [abs(round(b[0] / b[1], 5) - h / w) for b in (ours, theirs)]
            assert gap[0] < gap[1], (h, w, ours, theirs)
            differ.append((h, w))
    # 720p, portrait 9:16: the exact 1280x720 bucket's rounded ratio 1.77778 is a hair above 16/9, so diffusers
    # skips it for 1264x720
    assert differ == ([] if target == 640 else [(16, 9), (1280, 720)])
    assert hv15_bucket(960, 16, 9) == (1280, 720)


# --------------------------------------------------------------------------- generate.py's spellings
@pytest.mark.parametrize(
    ("official", "ours"),
    [
        (["--model_path", "BASE"], ["--model-base", "BASE"]),
        (["--negative_prompt", "blur", "--cfg-scale", "2"], ["--neg-prompt", "blur", "--cfg-scale", "2"]),
        (["--negative-prompt", "blur", "--cfg-scale", "2"], ["--neg-prompt", "blur", "--cfg-scale", "2"]),
        (["--video_length", "33"], ["--video-length", "33"]),
        (["--num_inference_steps", "7"], ["--infer-steps", "7"]),
        (["--num-inference-steps", "7"], ["--infer-steps", "7"]),
        (["--dtype", "fp32"], ["--precision", "fp32"]),
        (["--aspect_ratio", "4:3"], ["--aspect-ratio", "4:3"]),
        (["--image_path", "IMG"], ["--image-path", "IMG"]),
        (["--image_path", "IMG"], ["--i2v-mode", "--i2v-image-path", "IMG"]),
        (["--image_path", "none"], []),  # generate.py: 'none' is text-to-video
        (["--cfg_distilled", "true"], ["--cfg-distilled"]),
        (["--cfg_distilled", "yes"], ["--cfg-distilled", "1"]),
        (["--cfg_distilled", "false"], ["--cfg-distilled", "off"]),
        (["--enable_step_distill", "on", "--image_path", "IMG"], ["--enable-step-distill", "--image-path", "IMG"]),
        (["--resolution", "480p", "--sr", "false"], ["--resolution", "480p", "--sr", "0"]),
        (["--offloading"], ["--offload", "model"]),
        (["--offloading", "--group_offloading"], ["--offload", "block"]),
        (["--enable_torch_compile"], ["--compile"]),
        (["--use_fp8_gemm", "--quant_type", "fp8-per-tensor-weight-only"], ["--use-fp8"]),
        (["--overlap_group_offloading", "false", "--save_generation_config", "true", "--rewrite", "false"], []),
    ],
)
def test_generate_py_spellings_give_the_same_request(tmp_path, image, official, ours) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_t2v", "480p_t2v_distilled", "480p_i2v", "480p_i2v_step_distilled")

    def argv(flags: list[str]) -> list[str]:
        out = ["--prompt", "a cat", "--save-path", str(tmp_path / "out"), "--device", "cpu", "--seed", "1"]
        if "BASE" not in flags:
            out += ["--model-base", str(base)]
        return out + [str(base) if a == "BASE" else str(image) if a == "IMG" else a for a in flags]

    parse = cli.build_parser().parse_args
    assert validate(parse(argv(official))) == validate(parse(argv(ours)))


def test_sr_left_at_generate_py_default_is_a_notice(tmp_path) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_t2v")
    notes: list[str] = []
    req(base, tmp_path, notes=notes)
    assert HV15_NOTICE_SR in notes
    notes.clear()
    req(base, tmp_path, "--sr", "false", notes=notes)
    assert HV15_NOTICE_SR not in notes


def test_output_path_names_the_video(tmp_path) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_t2v")
    argv = ["--prompt", "a cat", "--model-base", str(base), "--device", "cpu"]
    r = validate(cli.build_parser().parse_args([*argv, "--output_path", str(tmp_path / "videos" / "cat.mp4")]))
    assert (r.output_file, r.save_dir) == (tmp_path / "videos" / "cat.mp4", tmp_path / "videos")
    with pytest.raises(UsageError, match=r"^--output_path: names the file itself: drop --save-path$"):
        req(base, tmp_path, "--output_path", str(tmp_path / "cat.mp4"))


def test_dry_run_plans_a_version_before_the_download(tmp_path) -> None:
    r = req(tmp_path / "not_yet", tmp_path, "--dry-run", "--resolution", "720p", "--cfg_distilled")
    assert (r.family, r.version, r.paths, r.cfg_scale, r.flow_shift) == ("1.5", "720p_t2v_distilled", None, 1.0, 9.0)


def test_prompt_file_entries_keep_the_version_defaults(tmp_path, image) -> None:
    """`for_prompt` (prompt-file lines, the Python API) rebuilds sampling and text with the 1.5 defaults."""
    from hyvideo.request import for_prompt

    base = official_tree(tmp_path / "ckpts", "720p_i2v")
    argv = ["--prompt", "a cat", "--model-base", str(base), "--save-path", str(tmp_path / "o"), "--device", "cpu"]
    args = cli.build_parser().parse_args([*argv, "--image_path", str(image)])
    r = validate(args)
    other = for_prompt(r, {**vars(args), "prompt": "a dog", "seed": 4})
    assert (other.prompt, other.seed, other.cfg_scale, other.flow_shift, other.video_length) == (
        "a dog", 4, 6.0, 7.0, 121
    )  # fmt: skip
    assert (other.height, other.width, other.neg_prompt) == (1168, 784, "")
    for key, value in (("i2v_stability", True), ("embedded_cfg_scale", 1.0)):
        with pytest.raises(UsageError, match=f"^--{key.replace('_', '-')}: a HunyuanVideo \\(v1\\) option"):
            for_prompt(r, {**vars(args), key: value})


# --------------------------------------------------------------------------- refusals: exit 2, one line, no load
def refusal_cases(tmp_path: Path, image: Path) -> list[tuple[list[str], str]]:
    official = official_tree(tmp_path / "ckpts", "480p_t2v", "480p_i2v", "720p_i2v_distilled_sparse")
    t2v = diffusers_folder(tmp_path / "t2v", T2V_CLASS)
    i2v = diffusers_folder(tmp_path / "i2v", I2V_CLASS)
    v1 = tmp_path / "v1"
    (v1 / "hunyuan-video-t2v-720p").mkdir(parents=True)
    o = ["--model-base", str(official)]
    return [
        ([*o, "--sr", "true"], "--sr: the super-resolution stage needs the separate upsampler models: not supported; "
         "run with --sr false"),
        ([*o, "--sr"], "--sr: the super-resolution stage"),
        ([*o, "--rewrite"], "--rewrite: prompt rewriting needs an external LLM service"),
        ([*o, "--sparse_attn"], "--sparse_attn: SSTA sparse attention needs H-series GPUs"),
        ([*o, "--image_path", str(image), "--resolution", "720p"], "--model-base: " + str(official) + ": only "
         "720p_i2v_distilled_sparse fits, which needs SSTA sparse attention"),
        ([*o, "--save_pre_sr_video"], "--save_pre_sr_video: only with --sr"),
        ([*o, "--enable_cache"], "--enable_cache: feature caching"),
        ([*o, "--cache_type", "teacache"], "--cache_type: only with --enable_cache, which is not supported"),
        ([*o, "--teacache-thresh", "0.1"], "--teacache-thresh: TeaCache has no published calibration for "
         "HunyuanVideo 1.5"),
        ([*o, "--checkpoint_path", str(tmp_path)], "--checkpoint_path: training checkpoints"),
        ([*o, "--save_generation_config", "false"], "--save_generation_config: the run record"),
        ([*o, "--sage_blocks_range", "0-5"], "--sage_blocks_range: SageAttention runs in every block"),
        ([*o, "--quant_type", "fp8-per-tensor"], "--quant_type: only with --use_fp8_gemm"),
        ([*o, "--cfg_distilled", "maybe"], "--cfg_distilled: expected true or false"),
        ([*o, "--aspect_ratio", "16x9"], "--aspect_ratio: give W:H with two positive integers"),
        ([*o, "--aspect_ratio", "16:9", "--video-size", "480", "848"], "--aspect_ratio: give either"),
        ([*o, "--output_path", str(tmp_path / "a.avi")], "--output_path: "),
        ([*o, "--output_path", str(tmp_path / "a.mp4"), "--num-videos", "2"], "--output_path: names one video"),
        ([*o, "--offloading", "--offload", "block"], "--offloading: give either"),
        ([*o, "--use_sageattn", "--attn-backend", "sdpa"], "--use_sageattn: contradicts --attn-backend sdpa"),
        ([*o, "--use_fp8_gemm"], "--fp8-compute: needs a CUDA GPU"),  # CPU here: the fp8 matmul is refused
        ([*o, "--image_path", str(image), "--i2v-image-path", str(image)], "--image_path: give the image once"),
        ([*o, "--image_path", str(tmp_path / "no.png")], "--image_path: "),
        # v1-only flags with 1.5 weights
        ([*o, "--embedded-cfg-scale", "6"], "--embedded-cfg-scale: a HunyuanVideo (v1) option: not for 1.5 weights"),
        ([*o, "--i2v-condition-type", "latent_concat"], "--i2v-condition-type: a HunyuanVideo (v1) option"),
        ([*o, "--i2v-stability"], "--i2v-stability: a HunyuanVideo (v1) option"),
        ([*o, "--text-len", "100"], "--text-len: a HunyuanVideo (v1) option"),
        ([*o, "--model-resolution", "720p"], "--model-resolution: a HunyuanVideo (v1) option: not for 1.5 weights "
         "(use --resolution 480p|720p)"),
        ([*o, "--riflex", "on"], "--riflex: a HunyuanVideo (v1) option"),
        # 1.5-only flags with v1 weights
        (["--model-base", str(v1), "--resolution", "720p"], "--resolution: a HunyuanVideo 1.5 option, but "
         "--model-base " + str(v1) + " holds HunyuanVideo (v1) weights"),
        (["--model-base", str(v1), "--cfg_distilled"], "--cfg_distilled: a HunyuanVideo 1.5 option"),
        (["--model-base", str(v1), "--neg-byt5"], "--neg-byt5: a HunyuanVideo 1.5 option"),
        # image and weights
        (["--model-base", str(t2v), "--image_path", str(image)], "--image_path: --model-base " + str(t2v) + " holds "
         "text-to-video weights (480p_t2v); drop the image"),
        (["--model-base", str(t2v), "--i2v-mode", "--i2v-image-path", str(image)], "--i2v-mode: --model-base "),
        (["--model-base", str(i2v)], "--image_path: image-to-video weights (480p_i2v) need the first frame"),
        (["--model-base", str(i2v), "--image_path", str(image), "--resolution", "720p"], "--resolution: 720p, but "
         "--model-base " + str(i2v) + " holds 480p_i2v"),
        (["--model-base", str(i2v), "--image_path", str(image), "--enable_step_distill"], "--enable_step_distill: "
         "true, but --model-base " + str(i2v) + " holds 480p_i2v"),
        (["--model-base", str(i2v), "--image_path", str(image), "--video-length", "1"], "--video-length: 1 frame"),
        (["--model-base", str(tmp_path / "missing"), "--resolution", "480p"], "--model-base: "),
    ]  # fmt: skip


def test_refusals_exit_2_in_one_line_before_loading(tmp_path, image, capsys, monkeypatch) -> None:
    loaded: list[object] = []
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: loaded.append(a) or [])
    out = tmp_path / "out"
    for extra, message in refusal_cases(tmp_path, image):
        argv = ["--prompt", "a cat", "--seed", "1", "--save-path", str(out), "--device", "cpu", *extra]
        err = refused(argv, capsys)
        assert err.startswith("error: " + message), (extra, err)
    assert not loaded and not out.exists()


@pytest.mark.parametrize(
    ("extra", "start"),
    [
        (["--sr", "true"], "error: --sr: the super-resolution stage needs the separate upsampler models"),
        (["--rewrite", "1"], "error: --rewrite: prompt rewriting needs an external LLM service"),
        (["--sparse-attn"], "error: --sparse_attn: SSTA sparse attention"),
    ],
)
def test_subprocess_refusals_no_traceback(tmp_path: Path, extra: list[str], start: str) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_t2v")
    out = tmp_path / "results"
    p = subprocess.run(
        [sys.executable, str(REPO / "sample_video.py"), "--prompt", "x", "--model_path", str(base),
         "--save-path", str(out), *extra],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(start), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == "" and not out.exists()


def test_decoding_latents_needs_only_the_vae(tmp_path) -> None:
    base = official_tree(tmp_path / "ckpts", "480p_i2v")
    for folder in ("text_encoder", "vision_encoder"):
        for path in sorted((base / folder).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    latents = tmp_path / "a.latents.safetensors"
    latents.write_bytes(b"")
    argv = ["--model-base", str(base), "--decode-latents", str(latents), "--save-path", str(tmp_path / "o")]
    r = validate(cli.build_parser().parse_args([*argv, "--device", "cpu"]))
    assert (r.family, r.paths.version, r.i2v_mode, r.decode_latents) == ("1.5", "480p_i2v", False, latents)


def test_python_api_construction_takes_images_later(tmp_path) -> None:
    """The Python API validates once with `image_later` (each call brings its image): text-to-video weights stay
    text-to-video, image-to-video weights need no image yet."""
    values = {"prompt": "a cat", "device": "cpu", "save_path": str(tmp_path / "o")}
    t2v = validate({**values, "model_base": str(official_tree(tmp_path / "ckpts", "480p_t2v"))}, image_later=True)
    assert (t2v.task, t2v.i2v_mode) == ("t2v", False)
    i2v = validate({**values, "model_base": str(diffusers_folder(tmp_path / "d", I2V_CLASS))}, image_later=True)
    assert (i2v.task, i2v.i2v_mode, i2v.i2v_image) == ("i2v", True, None)


def test_vae_tiles_and_lora_names_follow_the_family(tmp_path) -> None:
    """1.5: tiles in multiples of 16 px with the official 1/8 overlap by default (256 -> 224); LoRA files are checked
    against the 1.5 DiT's diffusers names (a name of the 1.5 DiT passes, a v1-only name is refused) and the
    reverse for v1."""
    base = official_tree(tmp_path / "ckpts", "480p_t2v")
    r = req(base, tmp_path)
    assert (r.vae_tile_size, r.vae_tile_stride) == (256, 224)
    assert req(base, tmp_path, "--vae-tile-size", "128").vae_tile_stride == 112
    with pytest.raises(UsageError, match="--vae-tile-size: must be a multiple of 16"):
        req(base, tmp_path, "--vae-tile-size", "136")
    (tmp_path / "v1").mkdir()
    assert req(tmp_path / "v1", tmp_path).vae_tile_stride == 192  # v1 unchanged
    lora15, lora1 = tmp_path / "l15.safetensors", tmp_path / "l1.safetensors"
    pair = {"lora_A.weight": torch.zeros(2, 8), "lora_B.weight": torch.zeros(8, 2)}
    save_file({f"transformer.context_embedder_2.linear_1.{k}": v for k, v in pair.items()}, lora15)
    save_file({f"transformer.single_transformer_blocks.0.attn.to_q.{k}": v for k, v in pair.items()}, lora1)
    assert req(base, tmp_path, "--lora", str(lora15)).loras[0].path == lora15
    with pytest.raises(UsageError, match="--lora"):
        req(base, tmp_path, "--lora", str(lora1))
    assert req(tmp_path / "v1", tmp_path, "--lora", str(lora1)).loras[0].path == lora1
    with pytest.raises(UsageError, match="--lora"):
        req(tmp_path / "v1", tmp_path, "--lora", str(lora15))
