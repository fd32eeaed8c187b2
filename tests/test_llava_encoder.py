"""The I2V text + image encoding (LLaVA) on a tiny locally built LLaVA: parity with diffusers'
`HunyuanVideoImageToVideoPipeline`, the official rules restated independently, ids read from the folder's config."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoImageToVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from loguru import logger
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, LlavaForConditionalGeneration

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.modules.llava_encoder import (
    I2V_TEMPLATE,
    IMAGE_EMBED_INTERLEAVE,
    NEGATIVE_PROMPT_I2V,
    OFFICIAL_POSITIONS,
    I2VTextEncoders,
    LlavaEncoderConfig,
    TemplatePositions,
    assistant_start,
    check_prompt,
    kept_text_tokens,
    template_positions,
)
from hyvideo.modules.text_encoders import PRECISIONS
from hyvideo.tiny import TINY_DIT, random_dit
from hyvideo.tiny_llava import ADDED_TOKENS, set_config_ids, write_llava
from hyvideo.tiny_text import build_llm_tokenizer, write_text_encoders_diffusers

SHORT = "A cat walks on the grass, realistic"
LONG = "A panda dances happily in a snowy forest at night. " * 40  # ~480 tokens: truncated to text_len
N_FEATURES = 16  # the tiny tower: (56 / 14)^2
HEADER = 4  # eot, start_header, "assistant", end_header: cut from the text states


# tiny models: one thread (tests/conftest.py one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_llava")
    dims = write_llava(base / "diffusers", "diffusers", seed=0), write_llava(base / "official", seed=0)
    return base / "diffusers", base / "official", dims


def _encoders(root, **overrides) -> I2VTextEncoders:
    settings = {"precision": "fp32", "precision_2": "fp32", **overrides}
    return I2VTextEncoders(LlavaEncoderConfig.from_model_base(root, **settings))


@pytest.fixture(scope="module")
def encoders(roots):
    return _encoders(roots[0])


@pytest.fixture(scope="module")
def image():
    """A non-square random RGB image: the processor resizes its short side and centre-crops."""
    return Image.fromarray((np.random.RandomState(0).rand(70, 90, 3) * 255).astype(np.uint8))


def _diffusers_pipeline(root, transformer=None, vae=None, scheduler=None) -> HunyuanVideoImageToVideoPipeline:
    return HunyuanVideoImageToVideoPipeline(
        text_encoder=LlavaForConditionalGeneration.from_pretrained(root / "text_encoder").eval(),
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer"),
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=CLIPTextModel.from_pretrained(root / "text_encoder_2").eval(),
        tokenizer_2=CLIPTokenizer.from_pretrained(root / "tokenizer_2"),
        image_processor=CLIPImageProcessor.from_pretrained(root / "image_processor"),
    )


@pytest.fixture(scope="module")
def pipe(roots):
    return _diffusers_pipeline(roots[0])


def _diffusers_template(positions: TemplatePositions, n: int) -> dict:
    """diffusers' prompt_template with the positions of the tiny tokenizer (its default holds Llama-3's)."""
    slot = positions.image_slot
    return {
        "template": I2V_TEMPLATE,
        "crop_start": positions.crop_start,
        "image_emb_start": slot,
        "image_emb_end": slot + n,
        "image_emb_len": n,
    }


def official_restatement(llava, tokenizer, processor, prompt, image, k, text_len=256, skip=2, final_norm=False):
    """The official encoding written out plainly for one prompt, on the full model (every layer, LM head, the
    hidden_states list), with its constants replaced by the tiny tokenizer's values read off the token list."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ret = tokenizer.convert_tokens_to_ids("ĊĊ")  # byte-level "\n\n"
    crop = len(tokenizer(I2V_TEMPLATE.split("{}")[0])["input_ids"])
    length = text_len + crop
    ids = tokenizer(
        I2V_TEMPLATE.format(prompt), max_length=length, padding="max_length", truncation=True, return_tensors="pt"
    )
    row, mask = ids["input_ids"][0].tolist(), ids["attention_mask"][0].tolist()
    slot = row.index(image_id)
    n = N_FEATURES
    expanded = row[:slot] + [llava.config.image_token_index] * n + row[slot + 1 :]
    xmask = mask[:slot] + [1] * n + mask[slot + 1 :]
    pos = [sum(xmask[: i + 1]) - 1 if xmask[i] else 1 for i in range(len(xmask))]
    pixels = processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = llava(
            input_ids=torch.tensor([expanded]),
            attention_mask=torch.tensor([xmask]),
            position_ids=torch.tensor([pos]),
            pixel_values=pixels,
            output_hidden_states=True,
        )
    states = out.hidden_states[-(skip + 1)][0]
    if final_norm:
        states = llava.model.language_model.norm(states)
    returns = [i for i, t in enumerate(row) if t == ret]
    p = len(row) if len(returns) == 3 else returns[-1]  # official: 3 found -> the assistant's was truncated
    image_states = states[slot : slot + n][::k]
    text = torch.cat([states[crop - 1 + n : p - 1 + n - 4], states[p - 1 + n :]])
    text_mask = torch.tensor(mask[crop : p - 4] + mask[p:])
    return torch.cat([image_states, text]), torch.cat([torch.ones(len(image_states), dtype=torch.long), text_mask])


def test_layouts_and_ids(roots, tmp_path):
    diffusers_root, official_root, (dims_d, dims_o) = roots
    assert dims_d == dims_o
    for sub in ("text_encoder", "tokenizer", "image_processor", "text_encoder_2", "tokenizer_2"):
        assert (diffusers_root / sub).is_dir()
    assert sorted(p.name for p in official_root.iterdir()) == ["text_encoder_2", "text_encoder_i2v"]
    folder = official_root / "text_encoder_i2v"
    for name in ("tokenizer.json", "preprocessor_config.json", "config.json", "model.safetensors"):
        assert (folder / name).is_file()
    with safe_open(folder / "model.safetensors", "pt") as f:  # the key names transformers 4.39 wrote
        prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert prefixes == {
        "language_model.model",
        "language_model.lm_head",
        "vision_tower.vision_model",
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
    }
    # non-default ids (LlavaConfig: image 32000, no pad), `<image>` not the first added token
    tok = AutoTokenizer.from_pretrained(diffusers_root / "tokenizer")
    added = [tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS]
    assert added == [len(tok) - 3, len(tok) - 2, len(tok) - 1]
    assert (dims_d.image_token_index, dims_d.pad_token_id) == (added[1], added[2]) == (len(tok) - 2, len(tok) - 1)
    assert dims_d.image_token_index != 32000
    with pytest.raises(ValueError, match="layout"):
        write_llava(tmp_path, "comfyui")


def test_template_positions_are_derived_from_the_tokenizer(encoders):
    tok = encoders.llava.tokenizer
    pos = encoders.llava.positions
    # The tiny tokenizer keeps the template's words whole, so crop_start, slot and header length are Llama-3's;
    # its "\n\n" id is its own (Llama-3: 271), and its tower gives 16 features (the release's 576).
    assert (pos.crop_start, pos.image_slot, pos.header_len, pos.double_returns) == (103, 5, 4, 4)
    assert OFFICIAL_POSITIONS["crop_start"] == 103 and OFFICIAL_POSITIONS["image_emb_start"] == 5
    assert pos.double_return_id == tok.convert_tokens_to_ids("ĊĊ") != OFFICIAL_POSITIONS["double_return_token_id"]
    assert encoders.llava.image_features == N_FEATURES
    full = tok(I2V_TEMPLATE.format(SHORT))["input_ids"]
    assert full[: pos.crop_start] == tok(I2V_TEMPLATE.split("{}")[0])["input_ids"]
    header = ["<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ"]
    assert tok.convert_ids_to_tokens(full[-5:]) == header
    assert full[pos.image_slot] == tok.convert_tokens_to_ids("<image>")
    # another template: the positions follow it
    other = I2V_TEMPLATE.replace("<|end_header_id|>\n\n<image>", "<|end_header_id|>\n\nA cat <image>", 1)
    moved = template_positions(tok, other)
    added = len(tok("A cat ", add_special_tokens=False)["input_ids"])
    assert (moved.crop_start, moved.image_slot) == (pos.crop_start + added, pos.image_slot + added)
    # a tokenizer without an `<image>` token (the T2V one) is refused
    with pytest.raises(CheckpointError, match="<image>"):
        template_positions(build_llm_tokenizer())


@pytest.mark.parametrize("condition_type", ["token_replace", "latent_concat"])
def test_states_equal_diffusers_encode_prompt(roots, pipe, image, condition_type):
    """Same weights, image and template positions: diffusers' `encode_prompt` and ours agree exactly (measured max
    abs difference 0.0 for the states; the masks and CLIP's pooled vectors are equal), long prompts included."""
    k = IMAGE_EMBED_INTERLEAVE[condition_type]
    enc = _encoders(roots[0], condition_type=condition_type)
    template = _diffusers_template(enc.llava.positions, enc.llava.image_features)
    ours = enc.encode([SHORT, LONG], image)  # a batch of two: ours handles rows independently
    for i, prompt in enumerate([SHORT, LONG]):  # diffusers' truncation branch handles one prompt at a time
        with torch.no_grad():
            states, pooled, mask = pipe.encode_prompt(
                image=image, prompt=[prompt], prompt_template=template, device="cpu", image_embed_interleave=k
            )
        assert states.shape == (1, -(-N_FEATURES // k) + 256 - HEADER, 32)
        torch.testing.assert_close(ours.llm_states[i : i + 1], states, rtol=0, atol=1e-6)
        assert torch.equal(ours.llm_mask[i : i + 1], mask.long())
        torch.testing.assert_close(ours.clip_pooled[i : i + 1], pooled, rtol=0, atol=1e-6)
    assert ours.llm_mask.dtype == torch.int64
    assert ours.llm_mask[1].all(), "the long prompt fills every text position"
    assert ours.llm_mask[0, : N_FEATURES // k].all() and not ours.llm_mask[0, -1]


def test_layouts_give_the_same_states(roots, encoders, image):
    official = _encoders(roots[1])
    a, b = encoders.encode(SHORT, image), official.encode(SHORT, image)
    assert torch.equal(a.llm_states, b.llm_states) and torch.equal(a.llm_mask, b.llm_mask)
    assert torch.equal(a.clip_pooled, b.clip_pooled)


@pytest.mark.parametrize("final_norm", [False, True])
def test_states_equal_the_official_rule_restated(roots, image, final_norm):
    """Against the plain restatement on the full model: our model, built without the last two layers, gives
    hidden_states[-3] (and its final norm with --apply-final-norm), cropped and cut as the official code does."""
    enc = _encoders(roots[0], apply_final_norm=final_norm)
    llava = LlavaForConditionalGeneration.from_pretrained(roots[0] / "text_encoder").eval()
    for prompt in (SHORT, LONG):
        states, mask = official_restatement(
            llava, enc.llava.tokenizer, enc.llava.image_processor, prompt, image, 4, final_norm=final_norm
        )
        ours = enc.encode(prompt, image)
        torch.testing.assert_close(ours.llm_states[0], states, rtol=0, atol=1e-6)
        assert torch.equal(ours.llm_mask[0], mask)


def test_negative_uses_a_black_image_and_the_prompt_s_subsampling(roots, encoders, image):
    """Official: the negative prompt gets a black image (any size: it is black after resizing) and the same k as
    the prompt (4 with token_replace)."""
    llava = LlavaForConditionalGeneration.from_pretrained(roots[0] / "text_encoder").eval()
    tok, proc = encoders.llava.tokenizer, encoders.llava.image_processor
    black = Image.new("RGB", (90, 70), (0, 0, 0))
    states, mask = official_restatement(llava, tok, proc, NEGATIVE_PROMPT_I2V, black, 4)
    ours = encoders.encode_negative(NEGATIVE_PROMPT_I2V, (1280, 720))
    torch.testing.assert_close(ours.llm_states[0], states, rtol=0, atol=1e-6)
    assert torch.equal(ours.llm_mask[0], mask)
    assert ours.llm_states.shape[1] == N_FEATURES // 4 + 256 - HEADER
    # the image matters: the prompt with its own image differs from the prompt with a black image
    with_image = encoders.encode(NEGATIVE_PROMPT_I2V, image)
    assert (with_image.llm_states - ours.llm_states).abs().max() > 0.1


def _tiny_transformer_and_vae():
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=32,
        pooled_projection_dim=32,
        rope_axes_dim=(2, 4, 4),
        image_condition_type="token_replace",
    )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
    )
    return transformer, vae


def test_diffusers_negative_keeps_every_second_image_state(roots, encoders, image):
    """Where diffusers differs: its pipeline encodes the negative without passing `image_embed_interleave` on,
    so with token_replace its negative holds every 2nd image state (8 here) where the prompt and the official
    negative hold every 4th (4). Its negative equals ours encoded with k = 2."""
    transformer, vae = _tiny_transformer_and_vae()
    full = _diffusers_pipeline(roots[0], transformer, vae, FlowMatchEulerDiscreteScheduler(shift=7.0))
    calls = []
    encode_prompt = full.encode_prompt

    def recording(**kwargs):
        out = encode_prompt(**kwargs)
        calls.append((kwargs["image"], out[0], out[2]))
        return out

    full.encode_prompt = recording
    template = _diffusers_template(encoders.llava.positions, encoders.llava.image_features)
    full(
        image=image,
        prompt=SHORT,
        negative_prompt=NEGATIVE_PROMPT_I2V,
        true_cfg_scale=2.0,
        height=16,
        width=16,
        num_frames=5,
        num_inference_steps=1,
        prompt_template=template,
        output_type="latent",
    )
    (_, prompt_states, _), (black, negative_states, negative_mask) = calls
    assert np.asarray(black).max() == 0
    ours = encoders.encode_negative(NEGATIVE_PROMPT_I2V, black.size)
    assert prompt_states.shape[1] == ours.llm_states.shape[1] == N_FEATURES // 4 + 256 - HEADER
    assert negative_states.shape[1] == N_FEATURES // 2 + 256 - HEADER
    every_second, mask2 = encoders.llava.encode([NEGATIVE_PROMPT_I2V], [black], 2)
    torch.testing.assert_close(every_second, negative_states, rtol=0, atol=1e-6)
    assert torch.equal(mask2, negative_mask.long())


def test_ids_come_from_the_folder_s_config(roots, image, tmp_path):
    """The ids `<image>` is expanded to, and the pad id when the tokenizer has none, are read from config.json:
    changed there, the changed ids are used (a hard-coded id would make the LLaVA count no image tokens)."""
    base = _encoders(roots[0])
    root = tmp_path / "changed"
    shutil.copytree(roots[0], root)
    reserved = base.llava.tokenizer.convert_tokens_to_ids(ADDED_TOKENS[0])
    eot = base.llava.tokenizer.eos_token_id  # a pad id as plain Llama-3 setups use
    set_config_ids(root / "text_encoder", image_token_index=reserved, pad_token_id=eot)
    config_file = root / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["pad_token"]
    config_file.write_text(json.dumps(config))
    changed = _encoders(root)
    assert changed.llava.image_token_index == reserved != base.llava.image_token_index
    assert changed.llava.tokenizer.pad_token_id == eot != base.llava.tokenizer.pad_token_id
    fed = []
    hook = changed.llava.model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["input_ids"]), with_kwargs=True
    )
    try:
        out = changed.encode(SHORT, image)
    finally:
        hook.remove()
    slot = changed.llava.positions.image_slot
    assert (fed[0][0] == reserved).sum() == N_FEATURES and (fed[0][0, slot : slot + N_FEATURES] == reserved).all()
    assert fed[0][0, -1] == eot  # padding
    # the image token's own embedding is replaced by the image features: the real tokens' states are the original's
    # (padded positions hold another id now; they are masked out)
    reference = base.encode(SHORT, image)
    assert torch.equal(out.llm_mask, reference.llm_mask)
    real = out.llm_mask.bool()
    torch.testing.assert_close(out.llm_states[real], reference.llm_states[real], rtol=0, atol=1e-6)
    # what a hard-coded id does: the model finds no image tokens where the features should go
    with pytest.raises(Exception, match="Image features and image tokens do not match"):
        changed.llava.model(input_ids=fed[0].masked_fill(fed[0] == reserved, 0), pixel_values=torch.zeros(1, 3, 56, 56))


def test_truncation_follows_the_official_rule(encoders):
    """p = the last "\n\n"; when truncation dropped the assistant's (one fewer than the template holds), p = L and
    the last 4 tokens of the row are cut instead; a "\n\n" inside a truncated prompt then counts as the last one
    (the official rule, kept)."""
    pos = encoders.llava.positions
    tok = encoders.llava.tokenizer
    ret = pos.double_return_id
    crop, length = pos.crop_start, pos.crop_start + 20
    batch = encoders.llava.tokenize([SHORT])
    row = batch["input_ids"][0, :length].clone()
    p = assistant_start(batch["input_ids"][0], pos)
    assert tok.convert_ids_to_tokens(batch["input_ids"][0, p - 4 : p + 1].tolist())[-1] == "ĊĊ"
    truncated = torch.full((length,), tok.convert_tokens_to_ids("Ġcat"))
    truncated[:crop] = row[:crop]
    assert assistant_start(truncated, pos) == length
    keep = kept_text_tokens(truncated[None], pos)[0].tolist()
    assert keep == list(range(crop, length - 4))
    quirk = truncated.clone()
    quirk[crop + 10] = ret
    assert assistant_start(quirk, pos) == crop + 10
    expected = [*range(crop, crop + 6), *range(crop + 10, length)]
    assert kept_text_tokens(quirk[None], pos)[0].tolist() == expected


def test_truncation_logs_the_prompt_text_lost(encoders):
    """The warning names what the model does not see: the prompt beyond its first text_len - 4 tokens (not the
    template's header, which truncation also removes); a prompt that exactly fits logs nothing."""
    tok, pos = encoders.llava.tokenizer, encoders.llava.positions
    prompt_ids = tok(LONG, add_special_tokens=False)["input_ids"]
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        encoders.llava.tokenize([LONG])
        fits = tok.decode(prompt_ids[: 256 - HEADER])
        assert len(tok(fits, add_special_tokens=False)["input_ids"]) == 256 - HEADER
        encoders.llava.tokenize([fits])
    finally:
        logger.remove(sink)
    assert len(messages) == 1, messages
    assert f"{len(prompt_ids)} tokens, more than the {256 - HEADER} kept" in messages[0]
    assert repr(tok.decode(prompt_ids[256 - HEADER :])) in messages[0]
    assert "assistant" not in messages[0]
    # what is kept is indeed the prompt's first 252 tokens
    batch = encoders.llava.tokenize([LONG])
    keep = kept_text_tokens(batch["input_ids"], pos)[0]
    assert batch["input_ids"][0, keep].tolist() == prompt_ids[: 256 - HEADER]


def test_a_batch_equals_its_rows(encoders, image):
    """Two prompts with two images in one batch: each row equals its own encoding (measured: exactly)."""
    other = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batch = encoders.encode([SHORT, LONG], [image, other])
    for i, (prompt, img) in enumerate([(SHORT, image), (LONG, other)]):
        alone = encoders.encode(prompt, img)
        assert torch.equal(batch.llm_mask[i : i + 1], alone.llm_mask)
        real = alone.llm_mask.bool()
        torch.testing.assert_close(batch.llm_states[i : i + 1][real], alone.llm_states[real], rtol=0, atol=1e-6)
    assert (batch.llm_states[1, :4] - encoders.encode(LONG, image).llm_states[0, :4]).abs().max() > 0.1


@pytest.mark.parametrize("precision, bound", [("fp16", 0.02), ("bf16", 0.08)])
def test_half_precision_weights(roots, encoders, image, precision, bound):
    """fp16 / bf16 weights (pixels cast to the model's dtype): states in that dtype, close to fp32. Bounds: 2x the
    relative errors measured on these random weights (fp16 0.0093, bf16 0.043)."""
    half = _encoders(roots[0], precision=precision, precision_2=precision)
    ours, reference = half.encode([SHORT, LONG], image), encoders.encode([SHORT, LONG], image)
    assert ours.llm_states.dtype == ours.clip_pooled.dtype == PRECISIONS[precision]
    assert torch.equal(ours.llm_mask, reference.llm_mask)
    real = ours.llm_mask.bool()
    error = (ours.llm_states.float()[real] - reference.llm_states[real]).norm() / reference.llm_states[real].norm()
    assert error < bound


def test_the_dit_takes_the_embeddings_as_for_text_to_video(encoders, image):
    """The T2V DiT (text width 32 as the tiny LLaVA) runs on them unchanged, and the masked text positions do not
    reach its output (the image states come first and are always attended)."""
    emb = encoders.encode([SHORT, LONG], image)
    dit = random_dit(TINY_DIT, seed=0).eval()
    x = torch.randn(2, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t, guidance = torch.tensor([900.0, 900.0]), torch.tensor([6000.0, 6000.0])
    with torch.no_grad():
        out = dit(x, t, emb.llm_states, emb.llm_mask, emb.clip_pooled, guidance)
        noisy = emb.llm_states.masked_fill(~emb.llm_mask.bool()[..., None], 1e3)
        out_noisy_padding = dit(x, t, noisy, emb.llm_mask, emb.clip_pooled, guidance)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out_noisy_padding, out)  # measured: identical (masked keys get exactly zero weight)


def test_a_prompt_holding_the_image_placeholder_is_refused(encoders, image):
    with pytest.raises(ValueError, match="may not contain '<image>'"):
        check_prompt("A cat <image> on the grass")
    check_prompt("A cat <img> on the grass, <image without its bracket")
    with pytest.raises(ValueError, match="may not contain '<image>'"):
        encoders.encode(["A cat", "A cat <image> on the grass"], image)


def test_free_releases_both_models(roots, image):
    enc = _encoders(roots[0])
    enc.free()
    assert enc.llava.model is None and enc.clip.model is None


def test_pad_id_falls_back_to_the_config_then_eos(roots, tmp_path):
    """A tokenizer without a pad token pads with the config's pad id, else the language model's, else EOS."""
    root = tmp_path / "nopad"
    shutil.copytree(roots[0], root)
    tokenizer_config = root / "tokenizer" / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    del config["pad_token"]
    tokenizer_config.write_text(json.dumps(config))
    model_config = root / "text_encoder" / "config.json"
    config = json.loads(model_config.read_text())
    reserved = config["image_token_index"] - 1
    config["pad_token_id"], config["text_config"]["pad_token_id"] = None, reserved
    model_config.write_text(json.dumps(config))
    assert _encoders(root).llava.tokenizer.pad_token_id == reserved
    config["text_config"]["pad_token_id"] = None
    model_config.write_text(json.dumps(config))
    tok = _encoders(root).llava.tokenizer
    assert tok.pad_token_id == tok.eos_token_id


def test_unusable_folders_are_named(roots, tmp_path):
    t2v = tmp_path / "t2v"
    write_text_encoders_diffusers(t2v)
    cfg = LlavaEncoderConfig.from_model_base(roots[0], precision="fp32", precision_2="fp32")
    # the text-to-video LLM folder is not a LLaVA (its tokenizer has no <image> either)
    with pytest.raises(CheckpointError, match="not a LLaVA checkpoint"):
        I2VTextEncoders(replace(cfg, llava_path=t2v / "text_encoder"))
    no_processor = tmp_path / "no_processor"
    shutil.copytree(roots[0] / "image_processor", no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="no_processor: cannot load the LLaVA image processor"):
        I2VTextEncoders(replace(cfg, image_processor_path=no_processor))
    with pytest.raises(CheckpointError, match="<image>"):
        I2VTextEncoders(replace(cfg, tokenizer_path=t2v / "tokenizer"))
    with pytest.raises(ValueError, match="condition_type"):
        replace(cfg, condition_type="concat")
