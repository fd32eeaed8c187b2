"""Text conditioning of HunyuanVideo 1.5 (docs/DESIGN.md §20): Qwen2.5-VL's language model reads the prompt in a
chat template; byT5 reads the prompt's quoted text (hyvideo/modules/byt5_encoder.py).

For B prompts (c = crop_start, the template's tokens before the prompt: 108 with Qwen2.5's tokenizer):
  [system: the video instructions, user: prompt (" " if empty)] + the assistant header -> chat template
  -> ids, mask (B, c + 1000), right padding, truncation (a long prompt loses its end and the template's closing)
  -> Qwen2.5-VL language model -> hidden_states[-3], the output of its third-to-last layer (B, c + 1000, 3584)
  -> drop the first c positions -> states (B, 1000, 3584), mask (B, 1000)

crop_start is derived from the tokenizer as the official code derives it: the end of the first "<|im_start|>user\\n"
in the template applied to a probe prompt. The model is built without its last two layers and with an identity for
its final norm, so its output is that hidden state and the unused layers cost nothing; of an official folder (the
whole Qwen2.5-VL, vision tower included) only the language model's weights are read.

Under `--offload block` (docs/DESIGN.md §23) the language model is read into host memory and its decoder layers
stream through the device (`hyvideo.offload.stream_layers`); its embeddings and rotary table move to the device.
byT5 (0.2B parameters with the glyph tokens) is small: it always moves whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLTextModel
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

from hyvideo.errors import CheckpointError
from hyvideo.modules.byt5_encoder import BYT5_TEXT_LEN, ByT5Encoder
from hyvideo.modules.text_encoders import free_model, loading, quiet_transformers
from hyvideo.offload import stream_layers

QWEN_TEXT_LEN = 1000  # prompt positions kept after the crop (the tokenizer reads crop_start + this many)
QWEN_SKIP_LAYERS = 2  # hidden_states[-(2 + 1)]: the output of the third-to-last decoder layer

# The official video system message, verbatim (its source's line continuations leave runs of 9 spaces).
SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects:         "
    "1. The main content and theme of the video.         "
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.         "
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.         "
    "4. background environment, light, style and atmosphere.         "
    "5. camera angles, movements, and transitions used in the video."
)
USER_MARKER = "<|im_start|>user\n"  # the prompt starts right after it
CROP_PROBE = "a photo of a cat"  # the prompt the official code measures crop_start with
OFFICIAL_CROP_START = 108  # what that gives with Qwen2.5's tokenizer (diffusers hard-codes it); for reference


def chat(prompt: str) -> list[dict[str, str]]:
    """The conversation the template is applied to; an empty prompt becomes one space, as in both references."""
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": prompt or " "}]


def template_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of `prompt` in the template, with the assistant header, untruncated."""
    return tokenizer.apply_chat_template(chat(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def crop_start(tokenizer: PreTrainedTokenizerBase) -> int:
    """Template tokens before the prompt: the end of the first USER_MARKER in the probe's tokens."""
    ids = template_ids(tokenizer, CROP_PROBE)
    marker = tokenizer(USER_MARKER, add_special_tokens=False)["input_ids"]
    for i in range(len(ids) - len(marker) + 1):
        if ids[i : i + len(marker)] == marker:
            return i + len(marker)
    raise CheckpointError(f"the Qwen tokenizer's chat template has no {USER_MARKER!r} (not a Qwen2.5 tokenizer?)")


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the shards its index names, else every *.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weights")
    return files


def language_model_prefix(keys: list[str]) -> str:
    """The key prefix of the language model's weights: "model." (the Qwen2.5-VL release),
    "model.language_model." / "language_model." (transformers 5 saves) or "" (a bare text model, diffusers)."""
    found = {k[: -len("embed_tokens.weight")] for k in keys if k.endswith("embed_tokens.weight") and "visual" not in k}
    if len(found) != 1:
        raise ValueError(f"cannot tell the language model's weights apart (embed_tokens under {sorted(found)})")
    return found.pop()


def _read_language_model(folder: Path, layers: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The language model's tensors of decoder layers < `layers` (names as in Qwen2_5_VLTextModel); other tensors
    (vision tower, LM head, later layers) are never read."""
    files = _weight_files(folder)
    with loading(folder, "Qwen2.5-VL text encoder"):
        where = {key: f for f in [safe_open(path, "pt") for path in files] for key in list(f.keys())}
        prefix = language_model_prefix(list(where))
        state = {}
        for key, f in where.items():
            name = key[len(prefix) :]
            if not key.startswith(prefix) or "visual" in key or name.startswith("lm_head"):
                continue
            if name.startswith("layers.") and int(name.split(".")[1]) >= layers:
                continue
            state[name] = f.get_tensor(key).to(dtype)
    return state


def load_qwen(
    folder: Path, dtype: torch.dtype, device: torch.device | str, skip: int = QWEN_SKIP_LAYERS
) -> Qwen2_5_VLTextModel:
    """Qwen2.5-VL's language model without its last `skip` layers and with an identity final norm: its output is
    `hidden_states[-(skip + 1)]` of the whole model. Reads a full Qwen2.5-VL folder (official `text_encoder/llm`)
    or a bare `Qwen2_5_VLTextModel` folder (diffusers `text_encoder/`)."""
    with loading(folder, "Qwen2.5-VL text encoder"), quiet_transformers():
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    config = getattr(config, "text_config", None) or config  # a full Qwen2.5-VL config nests the language model's
    layers = config.num_hidden_layers - skip
    if layers < 1:
        raise CheckpointError(f"{folder}: {config.num_hidden_layers} layers, fewer than the {skip + 1} needed")
    config.num_hidden_layers = layers
    state = _read_language_model(folder, layers, dtype)
    with torch.device("meta"):
        model = Qwen2_5_VLTextModel(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: the language model's weights do not fit its config: {str(e)[:300]}") from None
    model.rotary_emb = Qwen2_5_VLRotaryEmbedding(config)  # its non-persistent frequency table, built for real
    model.norm = torch.nn.Identity()
    return model.to(device).eval().requires_grad_(False)


class QwenEncoder:
    """Per-token prompt states from Qwen2.5-VL's language model in the HunyuanVideo 1.5 template."""

    def __init__(
        self,
        model: Path,
        tokenizer: Path | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        text_len: int = QWEN_TEXT_LEN,
        stream: bool = False,
    ) -> None:
        with loading(tokenizer or model, "Qwen tokenizer"), quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(
                tokenizer or model, padding_side="right", local_files_only=True
            )
        self.crop_start = crop_start(self.tokenizer)
        probe = template_ids(self.tokenizer, CROP_PROBE)
        # the template's closing tokens (end of turn, assistant header) after the prompt
        self.suffix_len = (
            len(probe) - self.crop_start - len(self.tokenizer(CROP_PROBE, add_special_tokens=False)["input_ids"])
        )
        # streamed: read into host memory, the decoder layers go through the device
        self.model = load_qwen(model, dtype, "cpu" if stream else device)
        self.streamer = stream_layers(self.model, self.model.layers, torch.device(device)) if stream else None
        self.device = torch.device(device)
        self.text_len = text_len

    @property
    def max_length(self) -> int:
        """Tokens the model reads: the template's prefix + text_len."""
        return self.crop_start + self.text_len

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The prompts in the template: input_ids, attention_mask (B, max_length)."""
        conversations = [chat(p) for p in prompts]
        batch = self.tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        self._warn_truncated(prompts)
        return batch

    def _warn_truncated(self, prompts: list[str]) -> None:
        """Log the prompt text a long prompt loses (its end, then the template's closing tokens, are cut)."""
        for i, prompt in enumerate(prompts):
            ids = template_ids(self.tokenizer, prompt)
            end = len(ids) - self.suffix_len  # where the prompt's tokens end
            if end > self.max_length:
                dropped = self.tokenizer.decode(ids[self.max_length : end])
                logger.warning(
                    f"Qwen text encoder: prompt {i} is {end - self.crop_start} tokens, more than {self.text_len}; "
                    f"truncated, dropping: {dropped!r}"
                )

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> states (B, text_len, D), mask (B, text_len) int64."""
        batch = self.tokenize(prompts)
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, c + L, D)
        return states[:, self.crop_start :], mask[:, self.crop_start :]

    def free(self) -> None:
        """Drop the weights (the tokenizer stays); the encoder cannot encode afterwards."""
        self.streamer = None
        self.model = free_model(self.model)


@dataclass
class Text15Embeddings:
    """What the HunyuanVideo 1.5 DiT is conditioned on by text, for B prompts."""

    states: torch.Tensor  # (B, L, 3584) Qwen states, L = 1000
    mask: torch.Tensor  # (B, L) int64, 1 = prompt token
    byt5_states: torch.Tensor  # (B, 256, 1472) glyph states; zeros for a prompt without quoted text
    byt5_mask: torch.Tensor  # (B, 256) int64; zeros likewise

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Text15Embeddings:
        """Move the tensors; `dtype` applies to the float tensors only (the masks keep int64)."""
        return Text15Embeddings(
            self.states.to(device=device, dtype=dtype),
            self.mask.to(device=device),
            self.byt5_states.to(device=device, dtype=dtype),
            self.byt5_mask.to(device=device),
        )


class Text15Encoder:
    """Qwen2.5-VL + byT5 behind one call: `encode(prompts) -> Text15Embeddings`; `free()` afterwards."""

    def __init__(self, qwen: QwenEncoder, byt5: ByT5Encoder) -> None:
        self.qwen = qwen
        self.byt5 = byt5

    @classmethod
    def load(
        cls,
        llm: Path,
        llm_tokenizer: Path,
        byt5: Path,
        byt5_tokenizer: Path | None,
        glyph: Path | None,
        dtype: torch.dtype,
        device: torch.device | str,
        *,
        byt5_dtype: torch.dtype = torch.float32,
        text_len: int = QWEN_TEXT_LEN,
        byt5_text_len: int = BYT5_TEXT_LEN,
        stream: bool = False,
    ) -> Text15Encoder:
        """From explicit folders (official: llm = llm_tokenizer = text_encoder/llm, byt5 = byt5_tokenizer =
        text_encoder/byt5-small, glyph = text_encoder/Glyph-SDXL-v2; diffusers: text_encoder, tokenizer,
        text_encoder_2, tokenizer_2, glyph None). `dtype` is Qwen's; byT5 runs in `byt5_dtype`, float32 by
        default as in the official code (which never casts it). `stream`: Qwen's decoder layers stream through the
        device (--offload block); byT5 is loaded whole either way."""
        qwen = QwenEncoder(Path(llm), Path(llm_tokenizer), dtype=dtype, device=device, text_len=text_len, stream=stream)
        glyph_encoder = ByT5Encoder(
            Path(byt5),
            Path(byt5_tokenizer) if byt5_tokenizer else None,
            Path(glyph) if glyph else None,
            dtype=byt5_dtype,
            device=device,
            text_len=byt5_text_len,
        )
        return cls(qwen, glyph_encoder)

    def encode(self, prompts: str | list[str], *, glyph: bool = True) -> Text15Embeddings:
        """B prompts -> Text15Embeddings. glyph=False gives byT5 zeros whatever the quotes: what the official code
        gives the negative prompt (diffusers encodes the negative prompt's quoted text)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states, mask = self.qwen.encode(prompts)
        byt5_states, byt5_mask = self.byt5.encode(prompts) if glyph else self.byt5.zeros(len(prompts))
        return Text15Embeddings(states, mask, byt5_states, byt5_mask)

    def free(self) -> None:
        """Release both models' weights (call after encoding, before the DiT runs)."""
        self.qwen.free()
        self.byt5.free()
