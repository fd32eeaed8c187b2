"""The glyph encoder of HunyuanVideo 1.5 (docs/DESIGN.md §20.3): quoted text in the prompt, read by a byT5 encoder
whose weights come from Glyph-SDXL-v2.

For each prompt (one at a time, as both references do):
  prompt -> the texts between straight ("...") or curly (“...”) quotes, in order, deduplicated when more than one
  none -> states zeros (1, 256, D), mask zeros (1, 256)
  else -> 'Text "a". Text "b". ' -> byte tokens + </s>, padded/truncated to 256 -> T5 encoder -> (1, 256, D)

Two folder layouts hold the same encoder:
- official: `byt5-small/` (the T5 config and the byte tokenizer) and `Glyph-SDXL-v2/` (`checkpoints/byt5_model.pt`,
  the encoder weights, and `assets/color_idx.json` / `assets/multilingual_10-lang_idx.json`, whose color and font
  names become extra special tokens appended to the tokenizer; the checkpoint's embedding has their rows);
- diffusers: `text_encoder_2/` (`T5EncoderModel` with those weights) and `tokenizer_2/` (the tokens already added).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Config, T5EncoderModel

from hyvideo.errors import CheckpointError
from hyvideo.modules.text_encoders import check_loading, free_model, loading, quiet_transformers

BYT5_TEXT_LEN = 256  # byte tokens per prompt's glyph text, </s> included

# Quoted text: straight double quotes or curly double quotes, shortest match, never across the two kinds.
GLYPH_PATTERN = re.compile(r"\"(.*?)\"|“(.*?)”")

GLYPH_CHECKPOINT = Path("checkpoints/byt5_model.pt")
COLOR_ASSET = Path("assets/color_idx.json")
FONT_ASSET = Path("assets/multilingual_10-lang_idx.json")
# Prefix of the encoder's keys when the checkpoint is a training state ({"state_dict": {...}}); other keys dropped.
TRAINING_PREFIX = "module.text_tower.encoder."


def glyph_texts(prompt: str) -> list[str]:
    """The quoted texts of `prompt` in order; repeated ones kept once when there are several (an empty pair of
    quotes gives "")."""
    found = [straight or curly for straight, curly in GLYPH_PATTERN.findall(prompt)]
    return list(dict.fromkeys(found)) if len(found) > 1 else found


def glyph_prompt(prompt: str) -> str | None:
    """What byT5 reads for `prompt`: 'Text "a". Text "b". ' for quoted a and b, or None without quotes."""
    texts = glyph_texts(prompt)
    return "".join(f'Text "{text}". ' for text in texts) if texts else None


def glyph_tokens(glyph: Path) -> list[str]:
    """The special tokens the official loader appends to the byte tokenizer, in its order: `<color-i>` for each of
    the color table's entries, then `<xx-font-i>` per font (xx = the font name's first two letters, i its index)."""
    with loading(glyph, "Glyph-SDXL-v2 assets"):
        colors = json.loads((glyph / COLOR_ASSET).read_text())
        fonts = json.loads((glyph / FONT_ASSET).read_text())
    return [f"<color-{i}>" for i in range(len(colors))] + [f"<{name[:2]}-font-{fonts[name]}>" for name in fonts]


def glyph_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The T5 encoder weights of a Glyph-SDXL-v2 checkpoint, named as in `T5Stack` ("embed_tokens.weight",
    "block.0...", "final_layer_norm.weight"): either the plain state or a training state whose encoder keys carry
    TRAINING_PREFIX (the rest of that state is dropped). Tensors only: never unpickles arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(
            f"{path}: cannot load the byT5 glyph weights ({type(e).__name__}: {first[:200]})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        inner = state["state_dict"]
        state = {k[len(TRAINING_PREFIX) :]: v for k, v in inner.items() if k.startswith(TRAINING_PREFIX)}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def load_byt5_tokenizer(folder: Path, glyph: Path | None) -> PreTrainedTokenizerBase:
    """The byte tokenizer; with the official layout's `glyph` folder, the color and font tokens appended."""
    with loading(folder, "byT5 tokenizer"), quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if glyph is not None:
        tokenizer.add_tokens(glyph_tokens(glyph), special_tokens=True)
    return tokenizer


def load_byt5_model(
    folder: Path, glyph: Path | None, vocab_size: int, dtype: torch.dtype, device: torch.device | str
) -> T5EncoderModel:
    """The T5 encoder. Official (`glyph` given): the config of `folder` (byt5-small) with the embedding grown to
    the tokenizer's `vocab_size`, every weight from the glyph checkpoint (strict; byt5-small's own weights are
    never read). diffusers (`glyph` None): the `T5EncoderModel` saved in `folder`."""
    if glyph is None:
        with loading(folder, "byT5 text encoder"), quiet_transformers():
            model, info = T5EncoderModel.from_pretrained(
                folder, dtype=dtype, local_files_only=True, output_loading_info=True
            )
        check_loading(folder, info, ignore=("decoder", "lm_head"))
        return model.to(device).eval().requires_grad_(False)
    with loading(folder, "byT5 config"), quiet_transformers():
        config = T5Config.from_pretrained(folder, local_files_only=True)
    config.vocab_size = vocab_size
    with torch.device("meta"):
        model = T5EncoderModel(config)
    path = glyph / GLYPH_CHECKPOINT
    state = {k: v.to(dtype) for k, v in glyph_state_dict(path).items()}
    try:
        model.encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit the byT5 encoder of {folder}: {str(e)[:300]}") from None
    model.shared = model.encoder.embed_tokens  # one embedding, as in a loaded T5EncoderModel
    return model.to(device).eval().requires_grad_(False)


class ByT5Encoder:
    """Glyph states of B prompts: byT5 over their formatted quoted text, zeros for a prompt without quotes."""

    def __init__(
        self,
        model: Path,
        tokenizer: Path | None,
        glyph: Path | None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        text_len: int = BYT5_TEXT_LEN,
    ) -> None:
        self.tokenizer = load_byt5_tokenizer(tokenizer or model, glyph)
        self.model = load_byt5_model(model, glyph, len(self.tokenizer), dtype, device)
        if self.model.get_input_embeddings().num_embeddings < len(self.tokenizer):
            raise CheckpointError(
                f"{model}: the byT5 embedding has fewer rows than its tokenizer's {len(self.tokenizer)}"
            )
        self.device = torch.device(device)
        self.text_len = text_len

    @property
    def dim(self) -> int:
        """Width of the states (1472 for byt5-small)."""
        return self.model.config.d_model

    def zeros(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What a prompt without quoted text (and the official negative prompt) gets: states (B, L, D), mask (B, L)."""
        states = torch.zeros(batch, self.text_len, self.dim, device=self.device, dtype=self.model.dtype)
        return states, torch.zeros(batch, self.text_len, device=self.device, dtype=torch.int64)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> states (B, text_len, D), mask (B, text_len) int64; one prompt per forward, as the references."""
        states, masks = [], []
        for prompt in prompts:
            text = glyph_prompt(prompt)
            if text is None:
                state, mask = self.zeros(1)
            else:
                batch = self.tokenizer(
                    text, max_length=self.text_len, padding="max_length", truncation=True, return_tensors="pt"
                )  # input_ids, attention_mask: (1, text_len)
                mask = batch["attention_mask"].to(self.device)
                state = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask.float())[0]
            states.append(state)
            masks.append(mask)
        return torch.cat(states), torch.cat(masks)

    def free(self) -> None:
        """Drop the weights (the tokenizer stays); the encoder cannot encode afterwards."""
        self.model = free_model(self.model)
