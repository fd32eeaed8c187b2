"""A tiny random-weight LLaVA (text + image encoder of HunyuanVideo-I2V) for tests and the demo, built offline.

What the real one is: llava-llama-3-8b-v1_1 = a Llama-3-8B language model, a CLIP ViT-L/14-336 vision tower and a
two-layer projector, with a Llama-3 tokenizer to which `<image>` and a pad token were added after the base vocabulary.
The tiny one keeps every part and rule, only smaller:
- tokenizer: byte-level BPE with Llama-3's split, trained here on the tiny text corpus plus the I2V template (so
  "assistant" and the template's words are whole tokens, as in Llama-3), then `<|reserved_special_token_0|>`,
  `<image>` and `<pad>` appended. Their ids are therefore not LlavaConfig's defaults (`image_token_index` 32000, no
  pad), and `<image>` is not the first added token: code that hard-codes an id fails on this model;
- language model: a 4-layer Llama (so `hidden_states[-3]` is an inner layer);
- vision tower: CLIP-ViT, 56 px, 14 px patches -> 4 x 4 = 16 image features (the real one: 336 / 14 -> 576);
- a `CLIPImageProcessor` sized to the tower (shortest edge 56, centre crop 56 x 56, CLIP mean/std).

Two layouts, the same weights for the same seed:
- official (`text_encoder_i2v/`): one folder holding the LLaVA checkpoint with the key names transformers 4.39 wrote
  (`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`),
  its tokenizer and `preprocessor_config.json`; `text_encoder_2/` CLIP-L as for text-to-video;
- diffusers (`HunyuanVideoImageToVideoPipeline`): `text_encoder/` (`LlavaForConditionalGeneration`), `tokenizer/`,
  `image_processor/`, `text_encoder_2/`, `tokenizer_2/`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from hyvideo.modules.llava_encoder import I2V_TEMPLATE, NEGATIVE_PROMPT_I2V
from hyvideo.tiny_text import (
    LLAMA3_SPLIT,
    build_clip,
    build_clip_tokenizer,
    corpus,
    save_llm_tokenizer,
    train_bpe,
)

BASE_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# Appended after the trained vocabulary, in this order (the real release appends `<image>` and `<pad>` likewise).
ADDED_TOKENS = ("<|reserved_special_token_0|>", "<image>", "<pad>")
IMAGE_SIZE, PATCH_SIZE = 56, 14  # -> (56 / 14)^2 = 16 image features


def llava_corpus() -> list[str]:
    """The tiny text corpus plus the I2V template and its negative prompt, repeated so their words become tokens."""
    return corpus() + 20 * [I2V_TEMPLATE.replace("{}", "").replace("<image>", "")] + 5 * [NEGATIVE_PROMPT_I2V]


def _word_counts(tok: Tokenizer, texts: list[str]) -> Counter[tuple[str, ...]]:
    """Pre-tokenize `texts` with `tok`'s pre-tokenizer (special tokens cut out first) into symbol tuples."""
    specials = re.compile("|".join(re.escape(t) for t in BASE_SPECIALS))
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for part in specials.split(text):
            for piece, _ in tok.pre_tokenizer.pre_tokenize_str(part):
                words[tuple(piece)] += 1
    return words


def build_llava_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A Llama-3-like byte-level BPE tokenizer (BOS prepended, right padding) with `<image>` and `<pad>` added."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = train_bpe(_word_counts(tok, llava_corpus()), alphabet, list(BASE_SPECIALS), vocab_size)
    tok.model = models.BPE(vocab=vocab, merges=merges)
    tok.add_special_tokens([*BASE_SPECIALS, *ADDED_TOKENS])  # added tokens get ids vocab_size, +1, +2
    tok.decoder = decoders.ByteLevel()
    bos = BASE_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=4096,
    )


def build_image_processor(size: int = IMAGE_SIZE) -> CLIPImageProcessorPil:
    """CLIP preprocessing sized to the tiny tower: bicubic resize of the shortest edge, centre crop, CLIP mean/std."""
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_llava(tokenizer: PreTrainedTokenizerFast, seed: int, hidden: int = 32) -> LlavaForConditionalGeneration:
    """A random tiny LLaVA whose `image_token_index` / pad ids are the tokenizer's `<image>` / `<pad>`."""
    image_id, pad_id = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.2,  # larger than Llama's 0.02 so the random states are O(1)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_id,
        pad_token_id=pad_id,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_layer=-2,  # as llava-llama-3-8b-v1_1: the tower's second-to-last layer, CLS dropped
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


@dataclass(frozen=True)
class TinyLlavaDims:
    """Sizes the tiny DiT must match, and the ids the folder's configs carry."""

    llm_hidden: int  # DiT text_embed_dim (text_states_dim)
    clip_hidden: int  # DiT pooled_projection_dim (text_states_dim_2)
    image_token_index: int
    pad_token_id: int


def _build(seed: int) -> tuple[PreTrainedTokenizerFast, LlavaForConditionalGeneration, CLIPTokenizer, CLIPTextModel]:
    tokenizer = build_llava_tokenizer()
    llava = build_llava(tokenizer, seed)
    clip_tok = build_clip_tokenizer()
    return tokenizer, llava, clip_tok, build_clip(clip_tok, seed)


def _dims(llava: LlavaForConditionalGeneration, clip: CLIPTextModel) -> TinyLlavaDims:
    return TinyLlavaDims(
        llava.config.text_config.hidden_size,
        clip.config.hidden_size,
        llava.config.image_token_index,
        llava.config.pad_token_id,
    )


def legacy_llava_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`LlavaForConditionalGeneration.state_dict()` names (transformers 5) -> the ones transformers 4.39 saved, which
    the released `text_encoder_i2v/` files carry."""
    renames = (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    )
    out = {}
    for key, value in state.items():
        new = next((new + key[len(old) :] for old, new in renames if key.startswith(old)), None)
        if new is None:
            raise KeyError(f"unexpected LLaVA key {key!r}")
        out[new] = value.contiguous()
    return out


def write_llava_official(root: str | Path, seed: int = 0) -> TinyLlavaDims:
    """Write `root/text_encoder_i2v/` (LLaVA with 4.39 key names + tokenizer + image processor) and
    `root/text_encoder_2/` (CLIP-L model + tokenizer), as the official I2V `ckpts/` tree holds them."""
    root = Path(root)
    tokenizer, llava, clip_tok, clip = _build(seed)
    folder = root / "text_encoder_i2v"
    folder.mkdir(parents=True, exist_ok=True)
    llava.config.save_pretrained(folder)
    save_file(legacy_llava_keys(llava.state_dict()), folder / "model.safetensors", metadata={"format": "pt"})
    save_llm_tokenizer(tokenizer, folder)
    build_image_processor().save_pretrained(folder)
    clip.save_pretrained(root / "text_encoder_2")
    clip_tok.save_pretrained(root / "text_encoder_2")
    return _dims(llava, clip)


def write_llava_diffusers(root: str | Path, seed: int = 0) -> TinyLlavaDims:
    """Write the text side of a `HunyuanVideoImageToVideoPipeline` folder: `text_encoder/`, `tokenizer/`,
    `image_processor/`, `text_encoder_2/`, `tokenizer_2/`."""
    root = Path(root)
    tokenizer, llava, clip_tok, clip = _build(seed)
    llava.save_pretrained(root / "text_encoder")
    save_llm_tokenizer(tokenizer, root / "tokenizer")
    build_image_processor().save_pretrained(root / "image_processor")
    clip.save_pretrained(root / "text_encoder_2")
    clip_tok.save_pretrained(root / "tokenizer_2")
    return _dims(llava, clip)


def write_llava(root: str | Path, layout: str = "official", seed: int = 0) -> TinyLlavaDims:
    """The I2V text encoders of a tiny model in `layout` ("official" or "diffusers"), same weights for a seed."""
    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    return (write_llava_official if layout == "official" else write_llava_diffusers)(root, seed)


def set_config_ids(folder: str | Path, **ids: int) -> None:
    """Rewrite ids in a LLaVA folder's config.json (`image_token_index=`, `pad_token_id=`): for tests that show
    the encoder reads them from the folder."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config.update(ids)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
