"""Text encoders on the tiny locally-trained kit: template crop, layouts, parity with diffusers' pipeline."""

from __future__ import annotations

import hashlib

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
from loguru import logger

from hyvideo.modules.text_encoders import (
    OFFICIAL_CROP_START,
    PROMPT_TEMPLATES,
    TextEncoderConfig,
    TextEncoders,
)
from hyvideo.tiny_text import write_text_encoders_diffusers, write_text_encoders_official

PROMPTS = ["A cat walks on the grass, realistic", "A panda dances happily in a snowy forest at night. " * 3]


# tiny models: one thread (tests/conftest.py one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_text")
    dims = write_text_encoders_diffusers(base / "diffusers", seed=0), write_text_encoders_official(base / "official")
    return base / "diffusers", base / "official", dims


@pytest.fixture(scope="module")
def full_llm(roots):
    """The whole LLM as transformers loads it (every layer, final norm): the reference for our truncated one."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(roots[0] / "text_encoder", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def encoders(roots):
    cfg = TextEncoderConfig.from_model_base(roots[0], precision="fp32", precision_2="fp32")
    return TextEncoders(cfg)


def test_dims_and_layouts(roots):
    diffusers_root, official_root, (dims_d, dims_o) = roots
    assert dims_d == dims_o and (dims_d.llm_hidden, dims_d.clip_hidden) == (32, 32)
    for sub in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        assert (diffusers_root / sub).is_dir()
    assert sorted(p.name for p in official_root.iterdir()) == ["text_encoder", "text_encoder_2"]
    assert (official_root / "text_encoder" / "tokenizer.json").is_file()
    assert (official_root / "text_encoder_2" / "tokenizer.json").is_file()


def test_crop_start_is_the_template_prefix_length(encoders):
    tok = encoders.llm.tokenizer
    for name, template in PROMPT_TEMPLATES.items():
        prefix = template.split("{}")[0]
        assert encoders.llm.crop_start(template) == len(tok(prefix)["input_ids"])
        # The tiny tokenizer keeps the template words whole, so it gives Llama-3's counts (95 / 36).
        assert encoders.llm.crop_start(template) == OFFICIAL_CROP_START[name]
        full = tok(template.format(PROMPTS[0]))["input_ids"]
        assert tuple(full[: encoders.llm.crop_start(template)]) == encoders.llm.prefix_ids(template)
    # Any template: <|begin_of_text|> <|start_header_id|> user <|end_header_id|> "\n\n"
    assert encoders.llm.crop_start("<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>") == 5


def test_template_choice_by_frame_count(encoders):
    assert encoders.template(129) == encoders.template(5) == PROMPT_TEMPLATES["dit-llm-encode-video"]
    assert encoders.template(1) == PROMPT_TEMPLATES["dit-llm-encode"]
    assert (encoders.crop_start(129), encoders.crop_start(1)) == (95, 36)


def test_shapes_and_mask(encoders):
    emb = encoders.encode(PROMPTS, video_length=129)
    assert emb.llm_states.shape == (2, 256, 32) and emb.llm_states.dtype == torch.float32
    assert emb.llm_mask.shape == (2, 256) and emb.llm_mask.dtype == torch.int64
    assert emb.clip_pooled.shape == (2, 32)
    n_tokens = [len(encoders.llm.tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in PROMPTS]  # +eot
    assert emb.llm_mask.sum(1).tolist() == n_tokens
    for row, n in zip(emb.llm_mask, n_tokens, strict=True):  # right padding: ones then zeros
        assert row[:n].all() and not row[n:].any()


@pytest.mark.parametrize("video_length", [129, 1])
def test_parity_with_diffusers_encode_prompt(encoders, full_llm, video_length):
    pipe = HunyuanVideoPipeline(
        text_encoder=full_llm,
        tokenizer=encoders.llm.tokenizer,
        transformer=None,
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=encoders.clip.model,
        tokenizer_2=encoders.clip.tokenizer,
    )
    crop = encoders.crop_start(video_length)
    template = {"template": encoders.template(video_length), "crop_start": crop}
    kept = encoders.llm_input_length() - crop  # 256 for a video; 315 for 1 frame (the official input length)
    states, pooled, mask = pipe.encode_prompt(
        PROMPTS, prompt_template=template, device=torch.device("cpu"), max_sequence_length=kept
    )
    ours = encoders.encode(PROMPTS, video_length)
    assert (ours.llm_states - states).abs().max().item() <= 1e-6
    assert (ours.clip_pooled - pooled).abs().max().item() <= 1e-6
    assert torch.equal(ours.llm_mask, mask)


LONG = "A panda dances happily in a snowy forest at night. " * 25  # 300 tokens with the tiny tokenizer
LONGER = "A panda dances happily in a snowy forest at night. " * 30  # 360 tokens


def official_llm_rule(tokenizer, llm, prompt: str, video_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official tool's LLM encoding, restated from its code: the input is padded / truncated to text_len + the
    VIDEO template's hard-coded crop_start (256 + 95), whatever the request; the crop is the used template's."""
    name = "dit-llm-encode-video" if video_length > 1 else "dit-llm-encode"
    max_length = 256 + OFFICIAL_CROP_START["dit-llm-encode-video"]
    batch = tokenizer(
        [PROMPT_TEMPLATES[name].format(prompt)],
        max_length=max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    crop = OFFICIAL_CROP_START[name]
    return out.hidden_states[-3][:, crop:], batch["attention_mask"][:, crop:]


@pytest.mark.parametrize("prompt", [LONG, LONGER, PROMPTS[0]], ids=["300-tokens", "360-tokens", "short"])
@pytest.mark.parametrize("video_length", [1, 129])
def test_llm_input_length_follows_the_official_rule(encoders, full_llm, prompt, video_length):
    """A 1-frame request keeps up to 315 prompt tokens (351 - 36), a video 256 (351 - 95); issue 13 item 12."""
    want_states, want_mask = official_llm_rule(encoders.llm.tokenizer, full_llm, prompt, video_length)
    emb = encoders.encode([prompt], video_length)
    n_prompt = len(encoders.llm.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1  # + <|eot_id|>
    kept = min(n_prompt, 315 if video_length == 1 else 256)
    assert emb.llm_states.shape[1] == want_states.shape[1] == (315 if video_length == 1 else 256)
    assert int(emb.llm_mask.sum()) == int(want_mask.sum()) == kept
    assert torch.equal(emb.llm_mask, want_mask)
    assert (emb.llm_states - want_states).abs().max().item() <= 1e-6  # same fp32 LLM; ours stops 2 layers early
    if video_length == 1 and prompt == LONG:  # kept whole: 301 positions where cropping at 256 would lose 45
        assert kept == 301


def test_official_layout_matches_diffusers_layout(roots, encoders):
    cfg = TextEncoderConfig.from_model_base(roots[1], precision="fp32", precision_2="fp32")
    assert cfg.llm_tokenizer_path is None
    official = TextEncoders(cfg).encode(PROMPTS, 129)  # a LlamaForCausalLM folder: the LM head is skipped
    ours = encoders.encode(PROMPTS, 129)
    assert torch.equal(official.llm_states, ours.llm_states)
    assert torch.equal(official.clip_pooled, ours.clip_pooled)


def test_hidden_state_choice_and_final_norm(roots, encoders, full_llm):
    llm = encoders.llm
    template = encoders.template(129)
    batch = llm.tokenizer([template.format(PROMPTS[0])], max_length=256 + 95, padding="max_length")
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        hidden = full_llm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    states, _ = llm.encode([PROMPTS[0]], template)
    assert torch.equal(states, hidden[-3][:, 95:])
    cfg = TextEncoderConfig.from_model_base(roots[0], precision="fp32", precision_2="fp32", apply_final_norm=True)
    normed, _ = TextEncoders(cfg).llm.encode([PROMPTS[0]], template)
    with torch.no_grad():
        assert torch.allclose(normed, full_llm.norm(hidden[-3])[:, 95:], atol=1e-6)
    for skip in (0, 1):  # skip 0: the last layer's output after the final norm, as transformers returns it
        cfg = TextEncoderConfig.from_model_base(roots[0], precision="fp32", precision_2="fp32")
        cfg.hidden_state_skip_layer = skip
        got, _ = TextEncoders(cfg).llm.encode([PROMPTS[0]], template)
        assert torch.equal(got, hidden[-(skip + 1)][:, 95:])


def test_unused_last_layers_are_not_built(encoders, full_llm):
    """hidden_state_skip_layer 2: the last two decoder layers are never loaded nor run (no memory, no time)."""
    model = encoders.llm.model
    assert len(model.layers) == len(full_llm.layers) - 2
    assert isinstance(model.norm, torch.nn.Identity)
    n_ours = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in encoders.llm.final_norm.parameters())
    n_layer = sum(p.numel() for p in full_llm.layers[-1].parameters())
    assert n_ours == sum(p.numel() for p in full_llm.parameters()) - 2 * n_layer


def test_skip_beyond_the_model_is_refused(roots):
    from hyvideo.modules.text_encoders import LLMEncoder

    with pytest.raises(ValueError, match="hidden_state_skip_layer 99 > the LLM's"):
        LLMEncoder(roots[0] / "text_encoder", roots[0] / "tokenizer", dtype=torch.float32, hidden_state_skip_layer=99)


def test_truncation_warns(encoders):
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        emb = encoders.encode(["a red car " * 200], 129)
    finally:
        logger.remove(sink)
    assert emb.llm_mask.all()  # truncated: every kept position is a real token
    assert any("LLM text encoder" in m and "truncated" in m for m in messages)
    assert any("CLIP text encoder" in m and "truncated" in m for m in messages)
    messages.clear()
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        encoders.encode(PROMPTS, 129)
    finally:
        logger.remove(sink)
    assert messages == []


def test_bf16_and_free(roots):
    cfg = TextEncoderConfig.from_model_base(roots[0], precision="bf16", precision_2="bf16")
    enc = TextEncoders(cfg)
    emb = enc.encode(PROMPTS[:1], 129)
    assert emb.llm_states.dtype == emb.clip_pooled.dtype == torch.bfloat16
    assert emb.to(dtype=torch.float32).llm_mask.dtype == torch.int64
    enc.free()
    assert enc.llm.model is None and enc.clip.model is None


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TextEncoderConfig(tmp_path, tmp_path, precision="fp8")
    with pytest.raises(ValueError, match="prompt_template"):
        TextEncoderConfig(tmp_path, tmp_path, prompt_template="nope")


def test_tiny_kit_is_deterministic(tmp_path):
    def digest(root):
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    write_text_encoders_diffusers(tmp_path / "a", seed=3)
    write_text_encoders_diffusers(tmp_path / "b", seed=3)
    write_text_encoders_diffusers(tmp_path / "c", seed=4)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a["text_encoder/model.safetensors"] != c["text_encoder/model.safetensors"]
    assert a["tokenizer/tokenizer.json"] == c["tokenizer/tokenizer.json"]  # tokenizers do not depend on the seed


def test_llava_style_checkpoint_keeps_the_language_model(tmp_path, roots, encoders, full_llm):
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    llm = full_llm
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=llm.config))
    llava.model.language_model.load_state_dict(llm.state_dict())
    llava.save_pretrained(tmp_path / "llava")
    cfg = TextEncoderConfig(
        tmp_path / "llava", roots[0] / "text_encoder_2", roots[0] / "tokenizer", roots[0] / "tokenizer_2"
    )
    cfg.precision = cfg.precision_2 = "fp32"
    got = TextEncoders(cfg).encode(PROMPTS, 129)
    assert torch.equal(got.llm_states, encoders.encode(PROMPTS, 129).llm_states)


def test_tokenizer_files_name_generic_fast_tokenizer(roots):
    import json

    for folder in (roots[0] / "tokenizer", roots[1] / "text_encoder"):
        assert (
            json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
        )
    assert json.loads((roots[0] / "tokenizer_2" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "CLIPTokenizer"
    )


def test_full_clip_checkpoint_loads_its_text_tower(tmp_path, roots, encoders):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    text = encoders.clip.model
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    full = CLIPModel(CLIPConfig(text_config=text.config.to_dict(), vision_config=vision.to_dict(), projection_dim=8))
    full.text_model.load_state_dict(text.state_dict())
    full.save_pretrained(tmp_path / "clip")
    cfg = TextEncoderConfig(
        roots[0] / "text_encoder", tmp_path / "clip", roots[0] / "tokenizer", roots[0] / "tokenizer_2"
    )
    cfg.precision = cfg.precision_2 = "fp32"
    got = TextEncoders(cfg).encode(PROMPTS, 129)
    assert torch.equal(got.clip_pooled, encoders.encode(PROMPTS, 129).clip_pooled)


def test_skip_layer_beyond_depth_is_refused(roots):
    cfg = TextEncoderConfig.from_model_base(roots[0], precision="fp32", precision_2="fp32", hidden_state_skip_layer=4)
    with pytest.raises(ValueError, match="hidden_state_skip_layer"):
        TextEncoders(cfg)
