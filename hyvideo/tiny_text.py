"""Tiny random-weight text encoders for tests and the demo, built without any network access.

Two byte-level BPE tokenizers are trained here on a fixed in-code corpus (so every token of the prompt templates
and of the test prompts is covered):
- the LLM tokenizer mirrors the Llama-3 one: a regex split, byte-level BPE, `<|begin_of_text|>` prepended, the
  header/eot special tokens and a pad token; it is saved as a generic fast tokenizer (`AutoTokenizer` loads it);
- the CLIP tokenizer is a real `CLIPTokenizer` (lower-cased, `</w>` word ends, start/end-of-text tokens) built from
  locally trained vocab + merges, so diffusers' `HunyuanVideoPipeline` can take it as `tokenizer_2`.

The models are a random tiny `LlamaModel` (3 layers, so `hidden_states[-3]` is a real intermediate layer) and a
random tiny `CLIPTextModel`. Everything is a pure function of `seed`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from hyvideo.modules.text_encoders import PROMPT_TEMPLATES

LLM_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

# The pre-tokenizer split used by Llama-3 (tiktoken's cl100k pattern): runs of newlines stay one piece, so the
# template's "\n\n" before `{}` tokenizes the same with or without a prompt after it.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# CLIP's split (as transformers' CLIPTokenizer builds it): words, single digits, punctuation runs.
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

_SUBJECTS = (
    "A cat",
    "A small dog",
    "The old man",
    "A young woman",
    "Two children",
    "A red car",
    "A white horse",
    "The robot",
    "A flock of birds",
    "An astronaut",
    "A golden retriever",
    "A panda",
)
_ACTIONS = (
    "walks slowly",
    "runs quickly",
    "dances happily",
    "jumps over a fence",
    "looks at the camera",
    "plays with a ball",
    "rides a bicycle",
    "swims in the water",
)
_PLACES = (
    "on the grass",
    "in a busy city street at night",
    "on a sandy beach at sunset",
    "in a snowy forest",
    "inside a cozy kitchen",
    "under a blue sky with white clouds",
)
_STYLES = ("realistic", "cinematic lighting", "4K, high quality", "anime style", "slow motion, close-up shot")
_EXTRA = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, "
    "bad eyes, bad limbs, distortion",
    "The camera pans from left to right while the light changes from warm to cold.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024; punctuation: (a), [b], {c}, \"d\", 'e' - f / g? h! i... j",
    "Unicode: café, naïve, Straße, 東京, 猫, emoji 🙂 and symbols € £ ¥ ° ± ×.",
)


def corpus() -> list[str]:
    """The fixed training corpus: 480 combinatorial sentences, the prompt templates and a few extras."""
    sentences = [
        f"{s} {a} {p}, {st}."
        for (s, a), p, st in zip(
            itertools.product(_SUBJECTS, _ACTIONS), itertools.cycle(_PLACES), itertools.cycle(_STYLES)
        )
    ]
    sentences += [f"{s} {p}." for s, p in itertools.product(_SUBJECTS, _PLACES)]
    templates = [t.replace("{}", "") for t in PROMPT_TEMPLATES.values()]
    # Templates and extras repeated so their words become whole tokens.
    return sentences + 20 * templates + 5 * list(_EXTRA)


def train_bpe(words: Counter[tuple[str, ...]], alphabet: list[str], specials: list[str], vocab_size: int):
    """Plain BPE training, deterministic: repeatedly merge the most frequent adjacent pair (ties: the smallest
    pair in string order) until `vocab_size` or no pair occurs twice. `words` maps symbol tuples to counts.
    Returns (vocab {token: id}, merges [(left, right)]); ids: specials, then the alphabet, then merges in order.
    (The `tokenizers` trainer breaks ties in hash order, so its output changes from run to run.)"""
    vocab = {t: i for i, t in enumerate([*specials, *alphabet])}
    merges: list[tuple[str, str]] = []
    words = dict(words)
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 2:
            break
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        words = {_merge(word, best): n for word, n in words.items()}
    return vocab, merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every non-overlapping occurrence of `pair` in `word`, left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _words(tok: Tokenizer, texts: list[str], specials: list[str], suffix: str = "") -> Counter[tuple[str, ...]]:
    """Pre-tokenize `texts` with `tok`'s own normalizer/pre-tokenizer (special tokens cut out) into symbol tuples."""
    split = re.compile("|".join(re.escape(t) for t in specials))
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for part in split.split(text):
            if tok.normalizer is not None:
                part = tok.normalizer.normalize_str(part)
            for piece, _ in tok.pre_tokenizer.pre_tokenize_str(part):
                symbols = list(piece)
                symbols[-1] += suffix
                words[tuple(symbols)] += 1
    return words


def build_llm_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a Llama-3-like byte-level BPE tokenizer (BOS prepended, right padding with `<pad>`)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    specials = list(LLM_SPECIAL_TOKENS)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = train_bpe(_words(tok, corpus(), specials), alphabet, specials, vocab_size)
    tok.model = models.BPE(vocab=vocab, merges=merges)
    tok.add_special_tokens(specials)
    tok.decoder = decoders.ByteLevel()
    bos = LLM_SPECIAL_TOKENS[0]
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


def build_clip_tokenizer(vocab_size: int = 1024) -> CLIPTokenizer:
    """Train CLIP-style BPE vocab + merges (`</w>` word ends, lower case) and wrap them as a `CLIPTokenizer`."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    specials = [CLIP_BOS, CLIP_EOS]
    base = sorted(pre_tokenizers.ByteLevel.alphabet())
    alphabet = base + [ch + "</w>" for ch in base]  # every byte, inside a word and at its end (as CLIP's vocab)
    words = _words(tok, corpus(), specials, suffix="</w>")
    vocab, merges = train_bpe(words, alphabet, specials, vocab_size + len(base))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_llm(vocab_size: int, seed: int, hidden: int = 32, layers: int = 3) -> LlamaModel:
    """A random tiny Llama: `hidden` wide, `layers` deep, GQA 4 query / 2 kv heads, rope theta 5e5 as Llama-3."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.2,  # larger than Llama's 0.02 so the random states are O(1)
        bos_token_id=0,
        eos_token_id=3,
        pad_token_id=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaModel(config).eval()


def build_clip(tokenizer: CLIPTokenizer, seed: int, hidden: int = 32) -> CLIPTextModel:
    """A random tiny CLIP text tower; pooled output is read at the first `<|endoftext|>` token."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed + 1)
    return CLIPTextModel(config).eval()


@dataclass(frozen=True)
class TinyTextDims:
    """Sizes the tiny DiT must match."""

    llm_hidden: int  # DiT text_embed_dim (text_states_dim)
    clip_hidden: int  # DiT pooled_projection_dim (text_states_dim_2)


def save_llm_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save as the Llama-3 release does: tokenizer.json + a config naming the generic `PreTrainedTokenizerFast`
    (transformers 5 would write its internal "TokenizersBackend", which transformers 4 cannot resolve).
    Load it with `AutoTokenizer`: in transformers 5 `LlamaTokenizerFast` rebuilds a SentencePiece-style
    pipeline from the vocab and tokenizes byte-level BPE text differently."""
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _build(seed: int) -> tuple[PreTrainedTokenizerFast, LlamaModel, CLIPTokenizer, CLIPTextModel]:
    llm_tok = build_llm_tokenizer()
    llm = build_llm(len(llm_tok), seed)
    clip_tok = build_clip_tokenizer()
    clip = build_clip(clip_tok, seed)
    return llm_tok, llm, clip_tok, clip


def write_text_encoders_official(root: str | Path, seed: int = 0) -> TinyTextDims:
    """Write `root/text_encoder/` (a `LlamaForCausalLM` checkpoint + tokenizer, like the official tree, whose
    folder holds the LLaVA language model with its LM head) and `root/text_encoder_2/` (CLIP model + tokenizer)."""
    root = Path(root)
    llm_tok, llm, clip_tok, clip = _build(seed)
    causal = LlamaForCausalLM(llm.config)
    causal.model = llm
    torch.manual_seed(seed + 2)
    torch.nn.init.normal_(causal.lm_head.weight, std=0.02)  # present in the file, never used by the encoder
    causal.save_pretrained(root / "text_encoder")
    save_llm_tokenizer(llm_tok, root / "text_encoder")
    clip.save_pretrained(root / "text_encoder_2")
    clip_tok.save_pretrained(root / "text_encoder_2")
    return TinyTextDims(llm.config.hidden_size, clip.config.hidden_size)


def write_text_encoders_diffusers(root: str | Path, seed: int = 0) -> TinyTextDims:
    """Write the diffusers layout: `text_encoder/` (LlamaModel), `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`."""
    root = Path(root)
    llm_tok, llm, clip_tok, clip = _build(seed)
    llm.save_pretrained(root / "text_encoder")
    save_llm_tokenizer(llm_tok, root / "tokenizer")
    clip.save_pretrained(root / "text_encoder_2")
    clip_tok.save_pretrained(root / "tokenizer_2")
    return TinyTextDims(llm.config.hidden_size, clip.config.hidden_size)
