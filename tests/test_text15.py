"""HunyuanVideo 1.5 encoders (Qwen2.5-VL, byT5 glyph, SigLIP) against diffusers' 1.5 pipelines, on tiny random
models written in both folder layouts (hyvideo/tiny_qwen.py), fp32 on CPU."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts
from loguru import logger
from PIL import Image
from transformers import (
    AutoModel,
    AutoTokenizer,
    Qwen2_5_VLTextModel,
    Qwen2Tokenizer,
    SiglipVisionModel,
    T5EncoderModel,
    T5ForConditionalGeneration,
)
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from hyvideo.errors import CheckpointError
from hyvideo.modules.byt5_encoder import (
    GLYPH_CHECKPOINT,
    TRAINING_PREFIX,
    ByT5Encoder,
    glyph_prompt,
    glyph_state_dict,
    glyph_texts,
    glyph_tokens,
)
from hyvideo.modules.qwen_encoder import (
    OFFICIAL_CROP_START,
    USER_MARKER,
    Text15Embeddings,
    Text15Encoder,
    crop_start,
    language_model_prefix,
    load_qwen,
    template_ids,
)
from hyvideo.modules.siglip_encoder import VisionEncoder15
from hyvideo.modules.text_encoders import quiet_transformers
from hyvideo.tiny_qwen import (
    CHAT_TEMPLATE,
    QWEN_SPECIALS,
    TINY_BYT5_DIM,
    TINY_QWEN_DIM,
    TINY_SIGLIP_DIM,
    TINY_SIGLIP_TOKENS,
    write_tiny_text15,
)

CPU = torch.device("cpu")
PROMPTS = [
    "A cat walks on the grass, realistic.",
    'A neon sign saying "OPEN" glows in a busy city street at night.',
    "A poster with the words “Happy Birthday” and “2024” on a wall, close-up shot.",
    'A shop window reads "SALE" and “Welcome” and "SALE" again.',  # both kinds; the repeat kept once
    "",  # empty: the template gets one space
]
NEGATIVE = 'deformation, bad hands, text "watermark"'


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Both layouts of the same tiny weights (seed 0)."""
    root = tmp_path_factory.mktemp("text15")
    for layout in ("official", "diffusers"):
        write_tiny_text15(root / layout, layout, seed=0)
    return {"official": root / "official", "diffusers": root / "diffusers"}


def load_official(root: Path) -> Text15Encoder:
    te = root / "text_encoder"
    return Text15Encoder.load(te / "llm", te / "llm", te / "byt5-small", None, te / "Glyph-SDXL-v2", torch.float32, CPU)


def load_diffusers(root: Path) -> Text15Encoder:
    return Text15Encoder.load(
        root / "text_encoder",
        root / "tokenizer",
        root / "text_encoder_2",
        root / "tokenizer_2",
        None,
        torch.float32,
        CPU,
    )


@pytest.fixture(scope="module")
def encoders(folders) -> dict[str, Text15Encoder]:
    return {"official": load_official(folders["official"]), "diffusers": load_diffusers(folders["diffusers"])}


def tiny_vae() -> AutoencoderKLHunyuanVideo15:
    """The smallest VAE the diffusers pipelines accept (they read its config; encode_prompt never runs it)."""
    return AutoencoderKLHunyuanVideo15(
        latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1, spatial_compression_ratio=4
    )


@pytest.fixture(scope="module")
def pipe(folders, encoders) -> HunyuanVideo15Pipeline:
    """diffusers' T2V pipeline on the diffusers folder, its crop index set to the one the tiny tokenizer gives."""
    root = folders["diffusers"]
    pipeline = HunyuanVideo15Pipeline(
        text_encoder=Qwen2_5_VLTextModel.from_pretrained(root / "text_encoder"),
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer", padding_side="right"),
        transformer=None,
        vae=tiny_vae(),
        scheduler=None,
        text_encoder_2=T5EncoderModel.from_pretrained(root / "text_encoder_2"),
        tokenizer_2=AutoTokenizer.from_pretrained(root / "tokenizer_2"),
        guider=None,
    )
    pipeline.prompt_template_encode_start_idx = encoders["diffusers"].qwen.crop_start
    return pipeline


@torch.no_grad()  # as the pipeline's __call__ runs it (SDPA on CPU takes another kernel with grad: 1e-6 apart)
def diffusers_embeddings(pipe: HunyuanVideo15Pipeline, prompts: list[str]) -> Text15Embeddings:
    states, mask, byt5, byt5_mask = pipe.encode_prompt(
        prompts, device=CPU, dtype=torch.float32, batch_size=len(prompts)
    )
    return Text15Embeddings(states, mask.long(), byt5, byt5_mask.long())  # diffusers casts its masks to the dtype


def assert_same(ours: Text15Embeddings, ref: Text15Embeddings, atol: float = 0.0) -> None:
    for name in ("states", "mask", "byt5_states", "byt5_mask"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert (a.double() - b.double()).abs().max().item() <= atol, (name, (a - b).abs().max())


def test_crop_start_derived_from_the_tokenizer(encoders):
    """The tiny tokenizer's template prefix is not the 108 diffusers hard-codes; the crop ends at the user header."""
    tokenizer = encoders["diffusers"].qwen.tokenizer
    crop = crop_start(tokenizer)
    assert crop != OFFICIAL_CROP_START
    ids = template_ids(tokenizer, "A red car")
    marker = tokenizer(USER_MARKER, add_special_tokens=False)["input_ids"]
    assert ids[crop - len(marker) : crop] == marker
    assert tokenizer.decode(ids[crop:]).startswith("A red car<|im_end|>")


class _RanksConverter(TikTokenConverter):
    """transformers' tiktoken -> vocab + merges conversion, fed ranks we parsed (no `tiktoken` needed)."""

    def __init__(self, ranks: dict[bytes, int]) -> None:
        super().__init__(vocab_file=None)
        self.ranks = ranks

    def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
        return self.ranks


def test_crop_start_of_the_real_qwen_vocabulary():
    """Qwen's byte-level BPE (`qwen.tiktoken`, shipped by the `dashscope` package: `pip install --no-deps
    dashscope`) as a Qwen2Tokenizer with the chat special tokens: our system message and chat template give the
    crop diffusers hard-codes for the real tokenizer, 108."""
    spec = importlib.util.find_spec("dashscope")
    if spec is None or spec.origin is None:
        pytest.skip("the dashscope package (which ships qwen.tiktoken) is not installed")
    ranks = {}
    for line in (Path(spec.origin).parent / "resources" / "qwen.tiktoken").read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    vocab, merges = _RanksConverter(ranks).extract_vocab_merges_from_model("qwen.tiktoken")
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>")
    tokenizer.add_tokens(list(QWEN_SPECIALS), special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(ranks) == 151643
    assert crop_start(tokenizer) == OFFICIAL_CROP_START


def test_qwen_and_byt5_match_diffusers(encoders, pipe):
    """Batch of prompts of different lengths, with and without quoted text (straight and curly quotes)."""
    ours = encoders["diffusers"].encode(PROMPTS)
    assert ours.states.shape == (len(PROMPTS), 1000, TINY_QWEN_DIM)
    assert ours.byt5_states.shape == (len(PROMPTS), 256, TINY_BYT5_DIM)
    assert ours.mask.dtype == ours.byt5_mask.dtype == torch.int64
    assert ours.mask.sum(1).unique().numel() == len(PROMPTS)  # different lengths
    # byT5: zeros exactly for the prompts without quotes, encoded for the others
    assert [bool(m.any()) for m in ours.byt5_mask] == [False, True, True, True, False]
    assert not ours.byt5_states[[0, 4]].any()
    assert_same(ours, diffusers_embeddings(pipe, PROMPTS))  # measured: 0 (same ops, same order)


def test_byt5_matches_diffusers_get_byt5_prompt_embeds(encoders, pipe):
    byt5 = encoders["official"].byt5
    states, mask = byt5.encode(PROMPTS)
    with torch.no_grad():
        ref, ref_mask = HunyuanVideo15Pipeline._get_byt5_prompt_embeds(
            pipe.tokenizer_2, pipe.text_encoder_2, PROMPTS, CPU, 256
        )
    assert torch.equal(mask, ref_mask)
    assert (states - ref).abs().max().item() == 0.0


def test_long_prompt_truncated_as_the_references(encoders, pipe, caplog):
    """A prompt over 1000 tokens keeps its first 1000 (its end and the template's closing tokens are cut)."""
    long = " ".join(["A white horse runs quickly on a sandy beach at sunset."] * 120)
    qwen = encoders["diffusers"].qwen
    assert len(template_ids(qwen.tokenizer, long)) > qwen.max_length
    ours = encoders["diffusers"].encode([long, "A panda."])
    assert ours.mask[0].all() and ours.mask[1].sum() < 1000
    assert_same(ours, diffusers_embeddings(pipe, [long, "A panda."]))


def test_long_prompt_warning(encoders):
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        encoders["diffusers"].qwen.tokenize([" ".join(["A panda on the grass."] * 400)])
    finally:
        logger.remove(sink)
    assert len(messages) == 1 and "truncated" in messages[0] and "more than 1000" in messages[0]


def test_negative_prompt_official_zeros_vs_diffusers_encoded(encoders, pipe):
    """Official: the negative prompt never gets byT5 states (glyph=False -> zeros); diffusers encodes its quotes.
    The Qwen states agree."""
    ours = encoders["official"].encode([NEGATIVE], glyph=False)
    ref = diffusers_embeddings(pipe, [NEGATIVE])
    assert not ours.byt5_states.any() and not ours.byt5_mask.any()
    assert ref.byt5_mask.any() and ref.byt5_states.abs().sum() > 0
    assert torch.equal(ours.states, ref.states) and torch.equal(ours.mask, ref.mask)
    encoded = encoders["official"].encode([NEGATIVE])  # with glyph=True we give diffusers' states
    assert torch.equal(encoded.byt5_states, ref.byt5_states) and torch.equal(encoded.byt5_mask, ref.byt5_mask)


@pytest.mark.parametrize(
    "prompt",
    [
        "no quotes at all",
        'one "straight" quote',
        "one “curly” quote",
        'mixed "a" and “b”, then "a" again',
        '"dup" "dup"',
        'unbalanced "quote',
        'empty "" quotes',
        "curly ”reversed“ pair",
        'nested “outer "inner" rest”',
    ],
)
def test_glyph_formatting_matches_diffusers(prompt):
    assert glyph_prompt(prompt) == extract_glyph_texts(prompt)


def test_glyph_texts():
    assert glyph_texts('A "b" and “c” and "b"') == ["b", "c"]
    assert glyph_texts('"x" "x"') == ["x"]
    assert glyph_prompt('sign "OPEN" and “Happy”') == 'Text "OPEN". Text "Happy". '
    assert glyph_prompt("plain") is None


def test_layouts_give_identical_states(encoders, folders):
    """The official tree (full Qwen2.5-VL, byt5-small + Glyph-SDXL-v2) and the diffusers folder of the same weights."""
    a, b = encoders["official"].encode(PROMPTS), encoders["diffusers"].encode(PROMPTS)
    assert_same(a, b)
    vision = [
        VisionEncoder15.load(root / "image_encoder", root / "feature_extractor", torch.float32, CPU)
        for root in (folders["official"] / "vision_encoder" / "siglip", folders["diffusers"])
    ]
    image = gradient_image(96, 64)
    assert torch.equal(vision[0].encode(image), vision[1].encode(image))


def test_glyph_tokens_added_as_official(encoders, folders):
    """The official loader appends the color / font tokens; the diffusers tokenizer_2 has them saved."""
    text = 'Text "<color-2><en-font-1>". '
    official, diffusers = encoders["official"].byt5.tokenizer, encoders["diffusers"].byt5.tokenizer
    assert len(official) == len(diffusers) == 384 + 8
    ids = official(text)["input_ids"]
    assert ids == diffusers(text)["input_ids"] and official.convert_tokens_to_ids("<color-2>") in ids
    assert encoders["official"].byt5.model.get_input_embeddings().num_embeddings == 392


def test_official_loading_recipe(encoders, folders):
    """The official tree read the way the official code reads it gives our states: the whole Qwen2.5-VL through
    AutoModel (its language model, hidden_states[-3], crop), and byt5-small's encoder with the glyph tokens
    appended, the embedding grown and the checkpoint's encoder keys loaded strictly."""
    te = folders["official"] / "text_encoder"
    ours = encoders["official"]
    prompts = PROMPTS[:3]
    with quiet_transformers():
        full, info = AutoModel.from_pretrained(te / "llm", output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"lm_head.weight"} and not info["missing_keys"]
    batch = ours.qwen.tokenize(prompts)
    with torch.no_grad():
        hidden = full.language_model(**batch, output_hidden_states=True).hidden_states[-3]
    states, mask = ours.qwen.encode(prompts)
    crop = ours.qwen.crop_start
    assert torch.equal(states, hidden[:, crop:]) and torch.equal(mask, batch["attention_mask"][:, crop:])

    tokenizer = AutoTokenizer.from_pretrained(te / "byt5-small")
    with quiet_transformers():
        encoder = T5ForConditionalGeneration.from_pretrained(te / "byt5-small").get_encoder()
    tokenizer.add_tokens(glyph_tokens(te / "Glyph-SDXL-v2"), special_tokens=True)
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    training = torch.load(te / "Glyph-SDXL-v2" / GLYPH_CHECKPOINT, weights_only=True)["state_dict"]
    encoder.load_state_dict(
        {k[len(TRAINING_PREFIX) :]: v for k, v in training.items() if k.startswith(TRAINING_PREFIX)}
    )
    text = glyph_prompt(prompts[1])
    tokens = tokenizer(text, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = encoder(tokens.input_ids, attention_mask=tokens.attention_mask.float())[0]
    assert torch.equal(ours.byt5.encode([prompts[1]])[0], ref)


def test_qwen_official_folder_reads_only_the_language_model(folders):
    folder = folders["official"] / "text_encoder" / "llm"
    model = load_qwen(folder, torch.float32, CPU)
    names = [n for n, _ in model.named_parameters()]
    assert not any("visual" in n or "lm_head" in n for n in names)
    assert len(model.layers) == 2  # 4 - 2: the last two layers are never built
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())


def test_language_model_prefix():
    assert language_model_prefix(["model.embed_tokens.weight", "visual.patch_embed.proj.weight"]) == "model."
    assert language_model_prefix(["model.language_model.embed_tokens.weight", "lm_head.weight"]) == (
        "model.language_model."
    )
    assert language_model_prefix(["embed_tokens.weight", "layers.0.mlp.up_proj.weight"]) == ""
    with pytest.raises(ValueError, match="embed_tokens"):
        language_model_prefix(["layers.0.mlp.up_proj.weight"])


def test_unusable_folders_refused_naming_them(folders, tmp_path):
    """A folder without weights, a missing glyph folder, a layer-less text config: one CheckpointError each."""
    root = folders["diffusers"]
    empty = tmp_path / "text_encoder"
    empty.mkdir()
    (empty / "config.json").write_text((root / "text_encoder" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=str(empty)):
        load_qwen(empty, torch.float32, CPU)
    te = folders["official"] / "text_encoder"
    with pytest.raises(CheckpointError, match="missing"):
        ByT5Encoder(te / "byt5-small", None, tmp_path / "missing")
    with pytest.raises(CheckpointError, match="layers"):
        load_qwen(root / "text_encoder", torch.float32, CPU, skip=4)


def test_glyph_checkpoint_plain_state_and_refusals(folders, tmp_path, encoders):
    """A plain encoder state loads as the training state does; a pickle with non-tensor objects is refused."""
    glyph = folders["official"] / "text_encoder" / "Glyph-SDXL-v2"
    state = glyph_state_dict(glyph / GLYPH_CHECKPOINT)
    assert "module.logit_scale" not in state and "embed_tokens.weight" in state
    assert not any(k.startswith(TRAINING_PREFIX) for k in state)
    plain = tmp_path / "Glyph-SDXL-v2"
    (plain / "checkpoints").mkdir(parents=True)
    (plain / "assets").symlink_to(glyph / "assets")
    torch.save(state, plain / GLYPH_CHECKPOINT)
    byt5 = folders["official"] / "text_encoder" / "byt5-small"
    again = ByT5Encoder(byt5, None, plain)
    assert torch.equal(again.encode(PROMPTS)[0], encoders["official"].byt5.encode(PROMPTS)[0])
    with open(plain / GLYPH_CHECKPOINT, "wb") as f:
        pickle.dump({"state_dict": {"x": Path("/")}}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"byt5_model\.pt"):
        ByT5Encoder(byt5, None, plain)


def gradient_image(width: int, height: int) -> Image.Image:
    """A deterministic RGB image with detail in every channel."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_siglip_matches_diffusers_encode_image(folders):
    root = folders["diffusers"]
    ours = VisionEncoder15.load(root / "image_encoder", root / "feature_extractor", torch.float32, CPU)
    pipeline = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=None,
        vae=tiny_vae(),
        scheduler=None,
        text_encoder_2=None,
        tokenizer_2=None,
        guider=None,
        image_encoder=SiglipVisionModel.from_pretrained(root / "image_encoder"),
        feature_extractor=SiglipImageProcessorPil.from_pretrained(root / "feature_extractor"),
    )
    image = gradient_image(80, 48)
    states = ours.encode(image)
    assert states.shape == (1, TINY_SIGLIP_TOKENS, TINY_SIGLIP_DIM) and ours.tokens == TINY_SIGLIP_TOKENS
    with torch.no_grad():
        ref = pipeline.encode_image(image, batch_size=1, device=CPU, dtype=torch.float32)
    assert torch.equal(states, ref)
    # the official code hands the processor a uint8 array (H, W, 3) instead of the PIL image: same pixels
    pixels = ours.processor.preprocess(images=np.array(image), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        assert torch.equal(ours.model(pixel_values=pixels).last_hidden_state, states)


def test_embeddings_to():
    e = Text15Embeddings(
        torch.ones(1, 3, 2),
        torch.ones(1, 3, dtype=torch.int64),
        torch.ones(1, 4, 2),
        torch.ones(1, 4, dtype=torch.int64),
    )
    f = e.to(dtype=torch.float16)
    assert f.states.dtype == f.byt5_states.dtype == torch.float16 and f.mask.dtype == f.byt5_mask.dtype == torch.int64


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


OFFICIAL_FILES = {
    "text_encoder/llm/config.json",
    "text_encoder/llm/model.safetensors.index.json",
    "text_encoder/llm/model-00001-of-00002.safetensors",
    "text_encoder/llm/model-00002-of-00002.safetensors",
    "text_encoder/byt5-small/config.json",
    "text_encoder/byt5-small/model.safetensors",
    "text_encoder/Glyph-SDXL-v2/checkpoints/byt5_model.pt",
    "text_encoder/Glyph-SDXL-v2/assets/color_idx.json",
    "text_encoder/Glyph-SDXL-v2/assets/multilingual_10-lang_idx.json",
    "vision_encoder/siglip/image_encoder/config.json",
    "vision_encoder/siglip/image_encoder/model.safetensors",
    "vision_encoder/siglip/feature_extractor/preprocessor_config.json",
}


def test_writer_folders_and_determinism(folders, tmp_path):
    official, diffusers = _digest(folders["official"]), _digest(folders["diffusers"])
    assert set(official) >= OFFICIAL_FILES
    assert {p.split("/")[0] for p in official} == {"text_encoder", "vision_encoder"}
    assert {p.split("/")[1] for p in official} == {"llm", "byt5-small", "Glyph-SDXL-v2", "siglip"}
    assert {p.split("/")[0] for p in diffusers} == {
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "image_encoder",
        "feature_extractor",
    }
    write_tiny_text15(tmp_path / "again", "diffusers", seed=0)
    write_tiny_text15(tmp_path / "other", "diffusers", seed=1)
    write_tiny_text15(tmp_path / "t2v", "official", seed=0, vision=False)
    assert _digest(tmp_path / "again") == diffusers
    other = _digest(tmp_path / "other")
    assert other["text_encoder/model.safetensors"] != diffusers["text_encoder/model.safetensors"]
    assert other["tokenizer/tokenizer.json"] == diffusers["tokenizer/tokenizer.json"]
    assert not (tmp_path / "t2v" / "vision_encoder").exists()
    with pytest.raises(ValueError, match="layout"):
        write_tiny_text15(tmp_path / "bad", "comfy", seed=0)
