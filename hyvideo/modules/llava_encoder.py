"""Text + image conditioning of HunyuanVideo-I2V (docs/DESIGN.md §16): a LLaVA (Llama-3 + CLIP vision tower)
reads the prompt in a template whose system turn holds the image; CLIP-L pools the prompt alone.

For B prompts with one image each (n = the vision tower's feature count, 576 for CLIP ViT-L/14-336; k = 4 for
token_replace, 2 for latent_concat; L = text_len + crop_start):
  template.format(prompt) -> ids, mask (B, L), right padding, truncation; one `<image>` at position `image_slot`
  `<image>` -> n copies of the config's image_token_index               ids (B, L + n - 1)
  LLaVA(ids, pixels of the whole image) -> hidden_states[-(skip + 1)]   (B, L + n - 1, D)
  image states: positions [slot, slot + n), every k-th                  (B, ceil(n / k), D)
  text states: tokens [crop_start, p - h) and [p, L), where p is the "\n\n" closing the assistant header (the last
    one; L when truncation dropped it) and the h tokens before it are that header (eot, start_header, "assistant",
    end_header)                                                         (B, text_len - h, D)
  states = cat[image, text], mask = cat[ones, the tokenizer's mask of the kept text tokens]

The template positions (crop_start 103, image slot 5, "\n\n" id 271, h = 4 for Llama-3's tokenizer) are derived
from the tokenizer (`template_positions`); the ids `<image>` is replaced with, and the pad id when the tokenizer has
none, come from the folder's config.json (copies of the released config disagree: 128256/128257 vs 128257/128258).

Negative prompt (real CFG): encoded with a black image and the same subsampling k as the prompt, as the official
code does. diffusers' `HunyuanVideoImageToVideoPipeline` encodes its negative with every 2nd feature whatever the
condition type (it does not pass its `image_embed_interleave` on): with token_replace its negative holds 2x the image
states of ours (the official's).

Under `--offload block` (docs/DESIGN.md §23) the LLaVA is read into host memory and its language model's decoder
layers stream through the device (`hyvideo.offload.stream_layers`); the vision tower (a CLIP ViT-L, 0.3B
parameters), the projector, the embeddings and the final norm move to the device whole, as does CLIP-L.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.modules.text_encoders import (
    PRECISIONS,
    CLIPEncoder,
    TextEmbeddings,
    check_loading,
    free_model,
    loading,
    quiet_transformers,
)
from hyvideo.offload import stream_layers

IMAGE_TOKEN = "<image>"

# The official I2V video template, verbatim; "{}" is where the prompt goes. The release also has an image
# (1-frame) variant, but its I2V text encoder refuses 1-frame input, so only this one is ever used.
I2V_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n<image>\nDescribe the video by detailing the following aspects "
    "according to the reference image: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>\n\n"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

# What the release hard-codes for that template with Llama-3's tokenizer; we derive them, these are for reference.
OFFICIAL_POSITIONS = {"crop_start": 103, "image_emb_start": 5, "image_emb_end": 581, "double_return_token_id": 271}

# The release's default negative prompt for I2V with real CFG.
NEGATIVE_PROMPT_I2V = "deformation, a poor composition and deformed video, bad teeth, bad eyes, bad limbs"

# Every k-th image state is kept, per condition type (the official `image_embed_interleave`).
IMAGE_EMBED_INTERLEAVE: dict[str, int] = {"token_replace": 4, "latent_concat": 2}


@dataclass(frozen=True)
class TemplatePositions:
    """Where things sit in the tokenized template, for one tokenizer (Llama-3's values in brackets)."""

    crop_start: int  # tokens before "{}", BOS and the one `<image>` included [103]
    image_slot: int  # index of `<image>` among them [5]
    image_token_id: int  # the tokenizer's id of `<image>` (the slot's id before expansion)
    double_return_id: int  # the "\n\n" token that closes the assistant header [271]
    header_len: int  # tokens of the assistant header before it: eot, start_header, "assistant", end_header [4]
    double_returns: int  # "\n\n" tokens in the template with an empty prompt [4]; one fewer = header truncated


def template_positions(tokenizer: PreTrainedTokenizerBase, template: str = I2V_TEMPLATE) -> TemplatePositions:
    """Derive the template's positions from the tokenizer; refuse a tokenizer without a single-token `<image>` or
    a template not ending in a lone "\n\n" token after the assistant header."""
    prefix, suffix = template.split("{}")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prefix_ids = tokenizer(prefix)["input_ids"]  # BOS included, as the model sees it
    if image_id is None or image_id == tokenizer.unk_token_id or prefix_ids.count(image_id) != 1:
        raise CheckpointError(f"the LLaVA tokenizer has no {IMAGE_TOKEN} token (it must be one added token)")
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    double_return = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    if len(double_return) != 1 or suffix_ids[-1:] != double_return:
        raise CheckpointError('the LLaVA tokenizer does not end the assistant header with one "\\n\\n" token')
    empty = tokenizer(template.format(""))["input_ids"]
    return TemplatePositions(
        crop_start=len(prefix_ids),
        image_slot=prefix_ids.index(image_id),
        image_token_id=image_id,
        double_return_id=double_return[0],
        header_len=len(suffix_ids) - 1,
        double_returns=empty.count(double_return[0]),
    )


def image_feature_count(config) -> int:
    """Image states the LLaVA puts in place of `<image>`: one per patch, plus CLS with the "full" strategy."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def expand_image_tokens(
    ids: torch.Tensor, mask: torch.Tensor, slot: int, n: int, image_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace the one `<image>` at `slot` by n copies of the model's image id, as transformers 4.39's LLaVA did
    inside the model: ids (B, L) -> ids, mask, position ids (B, L + n - 1); image positions are attended,
    positions count the attended tokens, padded positions get 1."""
    b = ids.shape[0]
    ids = torch.cat([ids[:, :slot], ids.new_full((b, n), image_token_id), ids[:, slot + 1 :]], dim=1)
    mask = torch.cat([mask[:, :slot], mask.new_ones((b, n)), mask[:, slot + 1 :]], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return ids, mask, positions


def assistant_start(ids: torch.Tensor, positions: TemplatePositions) -> int:
    """The official rule for one row of ids (L,): p = the last "\n\n"; if the row holds one fewer than the template
    (truncation dropped the assistant's), p = L, so the last h tokens of the row are cut instead."""
    found = (ids == positions.double_return_id).nonzero().flatten().tolist()
    if len(found) == positions.double_returns - 1:
        return ids.shape[0]
    return found[-1]


def kept_text_tokens(ids: torch.Tensor, positions: TemplatePositions) -> torch.Tensor:
    """Indices (B, text_len - h) into the tokenized rows (B, L) of the text states kept: [crop_start, p - h) and
    [p, L) per row (the prompt and its padding, without the template and the assistant header)."""
    length = ids.shape[1]
    rows = []
    for row in ids:
        p = assistant_start(row, positions)
        rows.append(list(range(positions.crop_start, p - positions.header_len)) + list(range(p, length)))
    return torch.tensor(rows, device=ids.device)


def select_states(
    states: torch.Tensor,
    mask: torch.Tensor,
    ids: torch.Tensor,
    positions: TemplatePositions,
    n: int,
    interleave: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA states (B, L + n - 1, D) of tokenized rows ids / mask (B, L) -> the image states every `interleave`-th
    followed by the kept text states (B, ceil(n / k) + text_len - h, D), and their mask (ones, then the text's)."""
    slot = positions.image_slot
    image = states[:, slot : slot + n : interleave]  # (B, ceil(n / k), D)
    keep = kept_text_tokens(ids, positions)  # (B, Lt) indices in the unexpanded rows, all after the image slot
    text = torch.gather(states, 1, (keep + n - 1)[..., None].expand(-1, -1, states.shape[-1]))  # (B, Lt, D)
    text_mask = torch.gather(mask, 1, keep)
    image_mask = text_mask.new_ones(image.shape[:2])
    return torch.cat([image, text], dim=1), torch.cat([image_mask, text_mask], dim=1)


def check_prompt(prompt: str) -> None:
    """Refuse a prompt holding the template's image placeholder (it would become a second image slot); cheap, so
    callers can check user input before loading anything."""
    if IMAGE_TOKEN in prompt:
        raise ValueError(f"a prompt may not contain {IMAGE_TOKEN!r} (the I2V template's image placeholder)")


def black_image(size: tuple[int, int]) -> Image.Image:
    """The image the negative prompt is encoded with (official): black RGB of `size` = (width, height)."""
    return Image.new("RGB", size, (0, 0, 0))


def _pad_token_id(config, tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id a LLaVA folder names (its config, else its language model's), else end-of-sequence as for
    plain Llama-3; only for a tokenizer without a pad token."""
    for value in (getattr(config, "pad_token_id", None), getattr(config.text_config, "pad_token_id", None)):
        if value is not None:
            return value
    return tokenizer.eos_token_id


def _load_llava(path: str | Path, dtype: torch.dtype, device: torch.device | str, skip_last: int) -> torch.nn.Module:
    """The LLaVA (`LlavaModel`: vision tower, projector, language model; no LM head) built without the last
    `skip_last` language-model layers, whose weights are never read: with its final norm replaced by an identity
    (done by the caller), its output is `hidden_states[-(skip_last + 1)]` of the full model. Loads the released key
    names (transformers 4.39) and the current ones alike."""
    with loading(path, "LLaVA text encoder"), quiet_transformers():
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "vision_config", None) is None:
        raise CheckpointError(f"{path}: not a LLaVA checkpoint (config.json has no vision_config)")
    layers = config.text_config.num_hidden_layers
    if skip_last > layers:
        raise ValueError(f"hidden_state_skip_layer {skip_last} > the LLaVA's {layers} language-model layers")
    config.text_config.num_hidden_layers = layers - skip_last
    with loading(path, "LLaVA text encoder"), quiet_transformers():
        model, info = AutoModel.from_pretrained(
            path, config=config, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    # "layers.<i>." >= layers - skip also matches vision-tower layers, which are all built: none is unexpected
    check_loading(path, info, ignore=("lm_head",), layers_from=layers - skip_last)
    return model.to(device).eval().requires_grad_(False)


class LlavaEncoder:
    """Per-token states of prompt + image from HunyuanVideo-I2V's LLaVA (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        tokenizer_path: str | Path | None = None,
        image_processor_path: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        text_len: int = 256,
        hidden_state_skip_layer: int = 2,
        apply_final_norm: bool = False,
        stream: bool = False,
    ) -> None:
        with loading(tokenizer_path or path, "LLaVA tokenizer"):
            self.tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_path or path, padding_side="right", local_files_only=True
            )
        with loading(image_processor_path or path, "LLaVA image processor"):
            # PIL resize as transformers 4.39 did, whether or not torchvision is installed
            self.image_processor = CLIPImageProcessorPil.from_pretrained(
                image_processor_path or path, local_files_only=True
            )
        home = "cpu" if stream else device  # streamed: read into host memory, the layers go through the device
        self.model = _load_llava(path, dtype, home, hidden_state_skip_layer)
        config = self.model.config
        if self.tokenizer.pad_token is None:  # padded positions are masked out; the id is the one the model names
            self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(_pad_token_id(config, self.tokenizer))
        self.positions = template_positions(self.tokenizer)
        self.image_token_index = config.image_token_index  # what the model looks for in place of `<image>`
        self.image_features = image_feature_count(config)
        language_model = self.model.language_model
        self.final_norm = language_model.norm
        if hidden_state_skip_layer > 0:
            language_model.norm = torch.nn.Identity()
        self.streamer = stream_layers(self.model, language_model.layers, torch.device(device)) if stream else None
        self.final_norm.to(device)
        self.device = torch.device(device)
        self.text_len = text_len
        self.skip = hidden_state_skip_layer
        self.apply_final_norm = apply_final_norm
        if text_len <= self.positions.header_len:
            raise ValueError(f"text_len must exceed the {self.positions.header_len} assistant-header tokens")

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The prompts in the template: input_ids, attention_mask (B, text_len + crop_start)."""
        for prompt in prompts:
            check_prompt(prompt)
        max_length = self.text_len + self.positions.crop_start
        texts = [I2V_TEMPLATE.format(p) for p in prompts]
        batch = self.tokenizer(texts, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt")
        self._warn_truncated(texts)
        images = batch["input_ids"] == self.positions.image_token_id  # (B, L)
        if not images[:, self.positions.image_slot].all() or not (images.sum(1) == 1).all():
            raise ValueError(f"the tokenized template does not hold one {IMAGE_TOKEN} at {self.positions.image_slot}")
        return batch

    def _warn_truncated(self, texts: list[str]) -> None:
        """Log the prompt text a truncated prompt loses. Truncation drops the assistant header, so the official
        rule (`assistant_start`) cuts the row's last h tokens instead: the prompt keeps text_len - h tokens."""
        crop, h = self.positions.crop_start, self.positions.header_len
        kept_end = crop + self.text_len - h  # end of the prompt tokens kept, when truncated
        for i, ids in enumerate(self.tokenizer(texts, truncation=False)["input_ids"]):
            end = len(ids) - (h + 1)  # the prompt ends where eot + assistant header + "\n\n" begin
            if end > kept_end:
                dropped = self.tokenizer.decode(ids[kept_end:end])
                logger.warning(
                    f"LLaVA text encoder: prompt {i} is {end - crop} tokens, more than the {kept_end - crop} kept; "
                    f"truncated, dropping: {dropped!r}"
                )

    @torch.inference_mode()
    def encode(
        self, prompts: list[str], images: list[Image.Image], interleave: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts with one RGB image each -> states (B, ceil(n / k) + text_len - h, D), mask (same, int64)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        batch = self.tokenize(prompts)
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
        ids, mask, position_ids = expand_image_tokens(
            batch["input_ids"],
            batch["attention_mask"],
            self.positions.image_slot,
            self.image_features,
            self.image_token_index,
        )  # (B, L + n - 1)
        states = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            pixel_values=pixels.to(self.device, self.model.dtype),
            use_cache=False,
        ).last_hidden_state  # = hidden_states[-(skip + 1)]: the model stops there
        if self.apply_final_norm and self.skip > 0:
            states = self.final_norm(states)
        return select_states(
            states,
            batch["attention_mask"].to(self.device),
            batch["input_ids"].to(self.device),
            self.positions,
            self.image_features,
            interleave,
        )

    def free(self) -> None:
        """Drop the weights (tokenizer and image processor stay); the encoder cannot encode afterwards."""
        self.streamer = None
        self.model = self.final_norm = free_model(self.model)


@dataclass
class LlavaEncoderConfig:
    """Where the I2V text encoders live and how they encode (official flag names in brackets)."""

    llava_path: str | Path  # LLaVA folder (official: ckpts/text_encoder_i2v, also holding tokenizer + processor)
    clip_path: str | Path  # CLIP-L folder (official: ckpts/text_encoder_2)
    tokenizer_path: str | Path | None = None  # None = llava_path; diffusers: <base>/tokenizer
    image_processor_path: str | Path | None = None  # None = llava_path; diffusers: <base>/image_processor
    clip_tokenizer_path: str | Path | None = None  # None = clip_path; diffusers: <base>/tokenizer_2
    condition_type: str = "token_replace"  # sets the image-state subsampling [--i2v-condition-type]
    text_len: int = 256  # prompt tokens after the template crop, before the header cut [--text-len]
    text_len_2: int = 77  # CLIP tokens [--text-len-2]
    hidden_state_skip_layer: int = 2  # use hidden_states[-(skip+1)] [--hidden-state-skip-layer]
    apply_final_norm: bool = False  # [--apply-final-norm]
    precision: str = "fp16"  # LLaVA weights dtype [--text-encoder-precision]
    precision_2: str = "fp16"  # CLIP weights dtype [--text-encoder-precision-2]
    stream: bool = False  # the language model's decoder layers stream through the device (--offload block)

    def __post_init__(self) -> None:
        for name in ("precision", "precision_2"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name} must be one of {sorted(PRECISIONS)}, got {getattr(self, name)!r}")
        if self.condition_type not in IMAGE_EMBED_INTERLEAVE:
            raise ValueError(f"condition_type must be one of {sorted(IMAGE_EMBED_INTERLEAVE)}")
        if self.text_len < 1 or self.text_len_2 < 1:
            raise ValueError("text_len and text_len_2 must be positive")
        if self.hidden_state_skip_layer < 0:
            raise ValueError("hidden_state_skip_layer must be >= 0")

    @property
    def interleave(self) -> int:
        """Every k-th image state is kept: 4 for token_replace, 2 for latent_concat."""
        return IMAGE_EMBED_INTERLEAVE[self.condition_type]

    @classmethod
    def from_model_base(cls, base: str | Path, **overrides: object) -> LlavaEncoderConfig:
        """Paths for either layout: official (`text_encoder_i2v/` = LLaVA + tokenizer + image processor,
        `text_encoder_2/`) or diffusers (`text_encoder/`, `tokenizer/`, `image_processor/`, `text_encoder_2/`,
        `tokenizer_2/`)."""
        base = Path(base)
        if (base / "text_encoder_i2v").is_dir():
            paths = {"llava_path": base / "text_encoder_i2v", "clip_path": base / "text_encoder_2"}
        else:
            paths = {
                "llava_path": base / "text_encoder",
                "clip_path": base / "text_encoder_2",
                "tokenizer_path": base / "tokenizer",
                "image_processor_path": base / "image_processor",
                "clip_tokenizer_path": base / "tokenizer_2",
            }
        return cls(**{**paths, **overrides})


class I2VTextEncoders:
    """LLaVA + CLIP-L behind one call: `encode(prompts, images) -> TextEmbeddings`, as the DiT takes for T2V."""

    def __init__(self, config: LlavaEncoderConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.llava = LlavaEncoder(
            config.llava_path,
            config.tokenizer_path,
            config.image_processor_path,
            dtype=PRECISIONS[config.precision],
            device=device,
            text_len=config.text_len,
            hidden_state_skip_layer=config.hidden_state_skip_layer,
            apply_final_norm=config.apply_final_norm,
            stream=config.stream,
        )
        self.clip = CLIPEncoder(
            config.clip_path,
            config.clip_tokenizer_path,
            dtype=PRECISIONS[config.precision_2],
            device=device,
            text_len=config.text_len_2,
        )

    def encode(self, prompts: str | list[str], images: Image.Image | list[Image.Image]) -> TextEmbeddings:
        """B prompts, each with its image (or one image for all) -> TextEmbeddings; CLIP sees the prompt only."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        images = [images] * len(prompts) if isinstance(images, Image.Image) else list(images)
        images = [image.convert("RGB") for image in images]
        states, mask = self.llava.encode(prompts, images, self.config.interleave)
        return TextEmbeddings(states, mask, self.clip.encode(prompts))

    def encode_negative(self, prompts: str | list[str], size: tuple[int, int]) -> TextEmbeddings:
        """Negative prompts for real CFG, each with a black image of `size` (width, height) and the same
        subsampling as the prompt (official; diffusers keeps every 2nd image state here whatever the type)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.encode(prompts, [black_image(size)] * len(prompts))

    def free(self) -> None:
        """Release both models' weights (call after encoding, before the DiT runs)."""
        self.llava.free()
        self.clip.free()
