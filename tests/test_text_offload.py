"""The LLM text encoders under `--offload block` (docs/DESIGN.md §23): their decoder layers stream through the device
and the states equal the resident encoders' bit for bit, for the v1 Llama, the I2V LLaVA and the 1.5 Qwen2.5-VL.

On the CPU a streamed layer holds meta placeholders while it is off the device, so a forward that ran a layer the
streamer did not load would fail instead of computing; the streamer's trace and `max_resident` show it engaged.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from hyvideo import i2v, pipeline
from hyvideo.cli import parse_request
from hyvideo.modules import llava_encoder, qwen_encoder, text_encoders
from hyvideo.modules.llava_encoder import I2VTextEncoders, LlavaEncoderConfig
from hyvideo.modules.qwen_encoder import Text15Encoder
from hyvideo.modules.text_encoders import TextEncoderConfig, TextEncoders
from hyvideo.offload import DEFAULT_WINDOW, BlockStreamer
from hyvideo.tiny import write_tiny15_model, write_tiny_i2v_model
from hyvideo.tiny_llava import write_llava
from hyvideo.tiny_qwen import write_tiny_text15
from hyvideo.tiny_text import write_text_encoders_diffusers

CPU = torch.device("cpu")
PROMPTS = ["A cat walks on the grass", "A red car on a sandy beach at sunset, realistic style"]


# tiny models: one thread (tests/conftest.py one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def streamers(monkeypatch) -> list[BlockStreamer]:
    """Every streamer the encoders build, recorded (the encoders drop theirs when freed)."""
    made: list[BlockStreamer] = []
    for module in (text_encoders, llava_encoder, qwen_encoder):
        original = module.stream_layers

        def record(*args, original=original, **kwargs):
            made.append(original(*args, **kwargs))
            return made[-1]

        monkeypatch.setattr(module, "stream_layers", record)
    return made


def check_streamed(streamer: BlockStreamer, layers: int, forwards: int, live: bool = True) -> None:
    """Every layer ran in each forward, in order, each loaded by the streamer, never more than the window resident;
    while the encoder is `live` (not freed yet), the layers not resident hold meta placeholders."""
    runs = [i for op, i in streamer.trace if op == "run"]
    assert runs == list(range(layers)) * forwards
    assert streamer.max_resident == min(DEFAULT_WINDOW, layers)
    assert streamer.trace[0] == ("load", 0)
    for block, r in zip(streamer.modules, streamer.blocks, strict=True):
        assert not live or all(t.is_meta for t in block.parameters()) == (not r.on_device)


def check_freed(streamer: BlockStreamer) -> None:
    """After `free()`: the hooks are gone and no layer holds a real tensor."""
    for block in streamer.modules:
        assert not block._forward_pre_hooks and not block._forward_hooks
        assert all(t.is_meta for t in block.parameters())


@pytest.fixture(scope="module")
def v1_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_text")
    write_text_encoders_diffusers(root, seed=0)
    return root


@pytest.mark.parametrize(("skip", "final_norm"), [(0, False), (1, True)])
def test_v1_llm_streamed_equals_resident(v1_root, streamers, skip, final_norm):
    """Llama (3 layers; skip 0 streams all 3, skip 1 two of them and runs the final norm on the device)."""
    settings = {"precision": "fp32", "precision_2": "fp32", "hidden_state_skip_layer": skip}
    settings["apply_final_norm"] = final_norm
    resident = TextEncoders(TextEncoderConfig.from_model_base(v1_root, **settings))
    streamed = TextEncoders(TextEncoderConfig.from_model_base(v1_root, **settings, stream=True))
    assert resident.llm.streamer is None and streamed.llm.streamer is streamers[0]
    layers = 3 - skip
    for frames in (33, 1):  # the video and the image template: two forwards of the LLM
        a, b = resident.encode(PROMPTS, frames), streamed.encode(PROMPTS, frames)
        for x, y in ((a.llm_states, b.llm_states), (a.llm_mask, b.llm_mask), (a.clip_pooled, b.clip_pooled)):
            assert torch.equal(x, y)
    check_streamed(streamers[0], layers, forwards=2)
    assert not streamed.llm.model.embed_tokens.weight.is_meta  # the non-layer parts stay on the device
    streamed.free()
    assert streamed.llm.streamer is None
    check_freed(streamers[0])


def test_llava_streamed_equals_resident(tmp_path, streamers):
    """The I2V LLaVA (4 language-model layers, skip 2: 2 streamed; the vision tower moves whole)."""
    write_llava(tmp_path, "diffusers", seed=0)
    settings = {"precision": "fp32", "precision_2": "fp32"}
    resident = I2VTextEncoders(LlavaEncoderConfig.from_model_base(tmp_path, **settings))
    streamed = I2VTextEncoders(LlavaEncoderConfig.from_model_base(tmp_path, **settings, stream=True))
    image = Image.fromarray((np.random.RandomState(0).rand(70, 90, 3) * 255).astype(np.uint8))
    pairs = [
        (resident.encode(PROMPTS, image), streamed.encode(PROMPTS, image)),
        (resident.encode_negative(PROMPTS[0], (96, 64)), streamed.encode_negative(PROMPTS[0], (96, 64))),
    ]
    for a, b in pairs:
        for x, y in ((a.llm_states, b.llm_states), (a.llm_mask, b.llm_mask), (a.clip_pooled, b.clip_pooled)):
            assert torch.equal(x, y)
    check_streamed(streamers[0], 2, forwards=2)
    assert not any(t.is_meta for t in streamed.llava.model.vision_tower.parameters())
    streamed.free()
    check_freed(streamers[0])


def test_qwen_streamed_equals_resident(tmp_path, streamers):
    """HunyuanVideo 1.5's Qwen2.5-VL language model (4 layers, skip 2: 2 streamed); byT5 whole."""
    write_tiny_text15(tmp_path, "official", seed=0, vision=False)
    te = tmp_path / "text_encoder"

    def load(stream: bool) -> Text15Encoder:
        folders = (te / "llm", te / "llm", te / "byt5-small", None, te / "Glyph-SDXL-v2")
        return Text15Encoder.load(*folders, torch.float32, CPU, stream=stream)

    resident, streamed = load(False), load(True)
    prompts = ['A sign that reads "OPEN" on a red car', PROMPTS[0]]
    for glyph in (True, False):
        a, b = resident.encode(prompts, glyph=glyph), streamed.encode(prompts, glyph=glyph)
        for x, y in (
            (a.states, b.states),
            (a.mask, b.mask),
            (a.byt5_states, b.byt5_states),
            (a.byt5_mask, b.byt5_mask),
        ):
            assert torch.equal(x, y)
    check_streamed(streamers[0], 2, forwards=2)
    streamed.free()
    check_freed(streamers[0])


def test_free_drops_the_streamer_before_emptying_the_pinned_cache(v1_root, monkeypatch):
    """On CUDA, `free()` empties torch's pinned-host cache once the streamer (which holds the pinned slabs) is gone,
    so the text stage's pinned RAM is returned before the DiT pins its blocks; a resident encoder does not call it."""
    streamed = TextEncoders(TextEncoderConfig.from_model_base(v1_root, precision="fp32", stream=True))
    alive = weakref.ref(streamed.llm.streamer)
    calls: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # free_model's CUDA branch, on the CPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.accelerator, "empty_host_cache", lambda: calls.append(alive() is None))
    streamed.free()
    assert calls == [True]  # once (CLIP is not streamed), with the streamer already collected
    resident = TextEncoders(TextEncoderConfig.from_model_base(v1_root, precision="fp32"))
    resident.free()
    assert calls == [True]


@pytest.mark.parametrize("family", ["i2v", "hv15"])
def test_pipeline_text_step_streams_under_block_offload(tmp_path, streamers, family):
    """The pipeline's text step (`pipeline.encode_text`) of HunyuanVideo-I2V (LLaVA) and HunyuanVideo 1.5 (Qwen)
    streams under --offload block, with real CFG (two forwards), and gives the states of --offload none; the encoder
    is freed before it returns (hooks gone). v1 text-to-video: tests/test_offload.py."""
    argv = ["--prompt", PROMPTS[1], "--video-length", "5", "--device", "cpu", "--save-path", str(tmp_path / "out")]
    argv += ["--text-encoder-precision", "fp32", "--cfg-scale", "2.0"]
    if family == "i2v":
        root = write_tiny_i2v_model(tmp_path / "model", "diffusers", "token_replace", seed=1)
        image = tmp_path / "first.png"
        Image.fromarray((np.random.RandomState(0).rand(50, 70, 3) * 255).astype(np.uint8)).save(image)
        argv += ["--model-base", str(root), "--text-encoder-precision-2", "fp32", "--i2v-mode"]
        argv += ["--i2v-image-path", str(image)]
    else:
        root = write_tiny15_model(tmp_path / "model", "official", "480p_t2v", seed=2)
        argv += ["--model-base", str(root)]

    def encode(*extra: str):
        req = parse_request([*argv, *extra])
        req = i2v.resolve(req) if family == "i2v" else req
        paths = i2v.model_paths(req) if family == "i2v" else None
        return pipeline.encode_text(req, paths, CPU)

    resident = encode()
    assert streamers == []
    streamed = encode("--offload", "block")
    for a, b in zip(resident, streamed, strict=True):
        for name, x in vars(a).items():
            assert torch.equal(x, vars(b)[name]), name
    (streamer,) = streamers
    assert len(streamer.blocks) == 2  # tiny LLaVA / Qwen: 4 layers, the last 2 never built
    check_streamed(streamer, 2, forwards=2, live=False)  # the prompt, the negative prompt
    check_freed(streamer)
