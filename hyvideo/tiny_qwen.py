"""Tiny random-weight HunyuanVideo 1.5 encoders (Qwen2.5-VL, byT5 + glyph assets, SigLIP) for tests and the demo,
built without any network access.

What the real ones are, and what the tiny ones keep:
- Qwen2.5-VL-7B-Instruct (official `text_encoder/llm/`: the whole model, vision tower and LM head included, key
  names of its release: `model.layers.*`, `visual.*`, `lm_head.*`; a flat config.json). Tiny: a 4-layer, 32-wide
  language model (so `hidden_states[-3]` is an inner layer), mrope, a 2-block vision tower; the tokenizer a
  `Qwen2Tokenizer` (byte-level BPE with Qwen's split, NFC) trained here on a fixed corpus, its special tokens
  appended after the trained vocabulary as in the release, and a ChatML chat template. Its crop_start is not 108.
- byt5-small + Glyph-SDXL-v2: the byte tokenizer (no training: bytes), a 2-layer 24-wide T5 encoder; the glyph
  folder's color and font tables (a few entries, the real tables' shape) whose tokens grow the embedding, and
  `checkpoints/byt5_model.pt` as a training state (`state_dict` with `module.text_tower.encoder.*` keys plus one
  key that is not the encoder's).
- FLUX.1-Redux-dev's SigLIP (so400m, 384 px, patch 14 -> 729 x 1152). Tiny: 56 px, patch 14 -> 16 tokens x 48.

`write_tiny_text15(root, layout, seed)` writes the folders of one layout; both layouts of a seed hold the same
weights. Everything is a pure function of `seed`.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import (
    ByT5Tokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from hyvideo.modules.byt5_encoder import COLOR_ASSET, FONT_ASSET, GLYPH_CHECKPOINT, TRAINING_PREFIX
from hyvideo.modules.qwen_encoder import SYSTEM_MESSAGE
from hyvideo.tiny_text import corpus, train_bpe

TINY_QWEN_DIM = 32  # Qwen hidden size (DiT text_states_dim; real 3584)
TINY_BYT5_DIM = 24  # byT5 d_model (DiT byt5_dim; real 1472)
TINY_SIGLIP_DIM = 48  # SigLIP hidden size (DiT vision_dim; real 1152)
TINY_SIGLIP_IMAGE, TINY_SIGLIP_PATCH = 56, 14
TINY_SIGLIP_TOKENS = (TINY_SIGLIP_IMAGE // TINY_SIGLIP_PATCH) ** 2  # 16 (DiT vision_tokens; real 729)

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML as Qwen2.5's template writes plain-text messages (a default system turn when none is given).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Small color / font tables of the real assets' shape ({name: index}); font tokens use the first two letters.
TINY_COLORS = {"white": 0, "black": 1, "red": 2, "gold": 3}
TINY_FONTS = {"en-Roboto-Regular": 0, "en-Lobster": 1, "zh-NotoSansSC": 0, "ja-NotoSansJP": 0}

LAYOUTS = ("official", "diffusers")


def qwen_corpus() -> list[str]:
    """The tiny text corpus plus the system message, the chat roles and quoted-text prompts."""
    quoted = [
        'A neon sign saying "OPEN" glows.',
        "A poster with the words “Happy Birthday” on a wall.",
        'A shop window reads "SALE 50%" and "Welcome".',
    ]
    return corpus()[::4] + 3 * [SYSTEM_MESSAGE, "system\nuser\nassistant\n"] + 3 * quoted


def _qwen_words(texts: list[str]) -> Counter[tuple[str, ...]]:
    """Cut `texts` into byte-level words as Qwen2's tokenizer does (NFC, its split regex), special tokens removed."""
    specials = re.compile("|".join(re.escape(t) for t in QWEN_SPECIALS))
    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for part in specials.split(normalizers.NFC().normalize_str(text)):
            for piece, _ in split.pre_tokenize_str(part):
                words[tuple(piece)] += 1
    return words


@functools.cache
def _trained_bpe(vocab_size: int) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """BPE vocab and merges trained on `qwen_corpus`, once per process (every writer call shares them)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = train_bpe(_qwen_words(qwen_corpus()), alphabet, [], vocab_size)
    return tuple(vocab.items()), tuple(merges)


def build_qwen_tokenizer(vocab_size: int = 512) -> Qwen2Tokenizer:
    """A Qwen2.5-like tokenizer: BPE trained on `qwen_corpus`, the special tokens appended, the chat template."""
    trained_vocab, trained_merges = _trained_bpe(vocab_size)
    vocab, merges = dict(trained_vocab), list(trained_merges)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_tokens(list(QWEN_SPECIALS), special_tokens=True)  # ids after the trained vocabulary
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def build_qwen(tokenizer: Qwen2Tokenizer, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """A random tiny Qwen2.5-VL (language model, vision tower, LM head) sized to the tokenizer."""
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": TINY_QWEN_DIM,
        "intermediate_size": 2 * TINY_QWEN_DIM,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},  # sums to head_dim / 2 = 4
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.2,  # larger than Qwen's 0.02 so the random states are O(1)
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "out_hidden_size": TINY_QWEN_DIM,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def release_qwen_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`Qwen2_5_VLForConditionalGeneration.state_dict()` names (transformers 5) -> the release's
    (`model.language_model.` -> `model.`, `model.visual.` -> `visual.`, `lm_head.` kept)."""
    renames = (("model.language_model.", "model."), ("model.visual.", "visual."), ("lm_head.", "lm_head."))
    out = {}
    for key, value in state.items():
        new = next((new + key[len(old) :] for old, new in renames if key.startswith(old)), None)
        if new is None:
            raise KeyError(f"unexpected Qwen2.5-VL key {key!r}")
        out[new] = value.contiguous()
    return out


def release_qwen_config(config: Qwen2_5_VLConfig) -> dict:
    """The config.json of the release: the language model's fields at the top level, `vision_config` nested."""
    outer = config.to_dict()
    text = outer.pop("text_config")
    flat = {**text, **outer}
    flat.update(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"])
    return flat


def write_qwen_official(model: Qwen2_5_VLForConditionalGeneration, folder: Path) -> None:
    """The whole model in two safetensors shards with an index, the release's key names and flat config."""
    folder.mkdir(parents=True, exist_ok=True)
    state = release_qwen_keys(model.state_dict())
    shards: dict[str, dict[str, torch.Tensor]] = {"model-00001-of-00002.safetensors": {}}
    shards["model-00002-of-00002.safetensors"] = {}
    for i, (key, value) in enumerate(sorted(state.items())):
        shards[f"model-0000{1 + i % 2}-of-00002.safetensors"][key] = value
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())}}
    index["weight_map"] = dict(sorted(weight_map.items()))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = release_qwen_config(model.config)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_byt5_config() -> T5Config:
    """byt5-small's shape, tiny: gated-GELU feed-forward, relative position buckets, byte vocabulary (384)."""
    return T5Config(
        vocab_size=384,
        d_model=TINY_BYT5_DIM,
        d_kv=6,
        d_ff=2 * TINY_BYT5_DIM,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def build_glyph_tokenizer() -> ByT5Tokenizer:
    """The byte tokenizer with the glyph color and font tokens appended (what the official loader builds)."""
    tokenizer = ByT5Tokenizer()
    colors = [f"<color-{i}>" for i in range(len(TINY_COLORS))]
    fonts = [f"<{name[:2]}-font-{index}>" for name, index in TINY_FONTS.items()]
    tokenizer.add_tokens(colors + fonts, special_tokens=True)
    return tokenizer


def build_glyph_encoder(vocab_size: int, seed: int) -> T5EncoderModel:
    """The random tiny glyph encoder (the Glyph-SDXL-v2 weights' stand-in), embedding rows for every token."""
    config = build_byt5_config()
    config.vocab_size = vocab_size
    torch.manual_seed(seed + 1)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():  # T5's default init is tiny for the embedding's scale; make states O(1)
        model.shared.weight.normal_(0.0, 1.0)
    model.encoder.embed_tokens = model.shared
    return model


def build_siglip(seed: int) -> SiglipVisionModel:
    """A random tiny SigLIP vision tower (post-layernorm, attention-pool head as the released one)."""
    config = SiglipVisionConfig(
        hidden_size=TINY_SIGLIP_DIM,
        intermediate_size=2 * TINY_SIGLIP_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_SIGLIP_IMAGE,
        patch_size=TINY_SIGLIP_PATCH,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(seed + 2)
    return SiglipVisionModel(config).eval()


def build_siglip_processor() -> SiglipImageProcessorPil:
    """FLUX.1-Redux's preprocessing, sized to the tiny tower: bicubic resize to a square, scale, mean/std 0.5."""
    size = TINY_SIGLIP_IMAGE
    return SiglipImageProcessorPil(
        size={"height": size, "width": size},
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def save_siglip_processor(processor: SiglipImageProcessorPil, folder: Path) -> None:
    """Save naming `SiglipImageProcessor`, as the released preprocessor_config.json does."""
    processor.save_pretrained(folder)
    path = folder / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config["image_processor_type"] = "SiglipImageProcessor"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_glyph_official(encoder: T5EncoderModel, folder: Path) -> None:
    """`Glyph-SDXL-v2/`: the assets and `checkpoints/byt5_model.pt`, a training state (pickle of tensors only)."""
    (folder / COLOR_ASSET).parent.mkdir(parents=True, exist_ok=True)
    (folder / COLOR_ASSET).write_text(json.dumps(TINY_COLORS, indent=2) + "\n")
    (folder / FONT_ASSET).write_text(json.dumps(TINY_FONTS, indent=2) + "\n")
    state = {TRAINING_PREFIX + k: v.clone() for k, v in encoder.encoder.state_dict().items()}
    state["module.logit_scale"] = torch.tensor(2.5)  # not the encoder's: the loaders drop it
    (folder / GLYPH_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, folder / GLYPH_CHECKPOINT)


def write_tiny_text15(root: str | Path, layout: str = "official", seed: int = 0, *, vision: bool = True) -> None:
    """The HunyuanVideo 1.5 encoders of a tiny model in `layout`, the same weights for a seed.
    official: text_encoder/{llm, byt5-small, Glyph-SDXL-v2}/, vision_encoder/siglip/{image_encoder,
    feature_extractor}/; diffusers: text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, image_encoder/,
    feature_extractor/. `vision` False leaves out the SigLIP folders (a text-to-video diffusers folder has none)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    tokenizer = build_qwen_tokenizer()
    qwen = build_qwen(tokenizer, seed)
    glyph_tokenizer = build_glyph_tokenizer()
    glyph = build_glyph_encoder(len(glyph_tokenizer), seed)
    if layout == "official":
        llm = root / "text_encoder" / "llm"
        write_qwen_official(qwen, llm)
        tokenizer.save_pretrained(llm)
        byt5 = root / "text_encoder" / "byt5-small"
        torch.manual_seed(seed + 3)  # byt5-small's own weights: present, never read (the glyph weights replace them)
        T5ForConditionalGeneration(build_byt5_config()).save_pretrained(byt5)
        ByT5Tokenizer().save_pretrained(byt5)
        write_glyph_official(glyph, root / "text_encoder" / "Glyph-SDXL-v2")
        siglip = root / "vision_encoder" / "siglip"
        image_encoder, feature_extractor = siglip / "image_encoder", siglip / "feature_extractor"
    else:
        qwen.model.language_model.save_pretrained(root / "text_encoder")
        tokenizer.save_pretrained(root / "tokenizer")
        glyph.save_pretrained(root / "text_encoder_2")
        glyph_tokenizer.save_pretrained(root / "tokenizer_2")
        image_encoder, feature_extractor = root / "image_encoder", root / "feature_extractor"
    if vision:
        build_siglip(seed).save_pretrained(image_encoder)
        save_siglip_processor(build_siglip_processor(), feature_extractor)
