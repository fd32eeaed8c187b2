"""Text conditioning: a decoder-only LLM (per-token states) and CLIP-L (one pooled vector), docs/DESIGN.md §4.

LLM: prompt -> template -> tokens (max_length = text_len + the video template's crop_start, right padding,
truncation) -> `hidden_states[-(skip + 1)]` (optionally the model's final norm) -> drop the first crop_start positions
of the template used, which hold its instruction prefix -> states (B, Lt, D) and mask (B, Lt).
CLIP: prompt -> 77 tokens (max_length padding, truncation) -> `pooler_output` (B, 768).

Weights load with transformers from local folders only (`local_files_only=True`); nothing is downloaded.

Under `--offload block` (docs/DESIGN.md §23) the LLM is read into host memory and its decoder layers stream through
the device (`hyvideo.offload.stream_layers`: a window of layers resident, pinned host copies on CUDA); its
embeddings and final norm move to the device. CLIP-L (123M parameters) is small: it always moves whole.

Input length, as the official tool sets it: the LLM always reads text_len + crop_start(video template) tokens
(256 + 95 = 351), whichever template the request uses. A video request crops 95 and keeps 256 states; a 1-frame
request (image template) crops only 36 and keeps 315 positions: a long prompt is cut after 315 tokens (its closing
<|eot_id|> included), not 256; a shorter one just gets more masked padding. diffusers' pipeline differs: it has one template (the video one) for
every frame count and pads to max_sequence_length + its crop_start, so it never keeps more than 256.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel
from transformers.utils import logging as hf_logging

from hyvideo.dtypes import PRECISIONS
from hyvideo.errors import CheckpointError
from hyvideo.offload import stream_layers, unstream

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# The two official prompt templates (docs/DESIGN.md §4.2), verbatim; "{}" is where the prompt goes.
PROMPT_TEMPLATES: dict[str, str] = {
    "dit-llm-encode": (  # images (1 frame); crop_start 36 with the Llama-3 tokenizer
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the color, shape, size, "
        "texture, quantity, text, spatial relationships of the objects and background:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "dit-llm-encode-video": (  # videos (frames > 1); crop_start 95 with the Llama-3 tokenizer
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
}

# What the official release hard-codes as crop_start (Llama-3 tokenizer); we compute it, this is for reference.
OFFICIAL_CROP_START: dict[str, int] = {"dit-llm-encode": 36, "dit-llm-encode-video": 95}

NEGATIVE_PROMPT = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, "
    "bad eyes, bad limbs, distortion"
)


@dataclass
class TextEncoderConfig:
    """Where the two text encoders live and how they encode (official flag names in brackets)."""

    llm_path: str | Path  # HF folder with the LLM weights (official: ckpts/text_encoder)
    clip_path: str | Path  # HF folder with CLIP-L (official: ckpts/text_encoder_2)
    llm_tokenizer_path: str | Path | None = None  # None = llm_path (official tree); diffusers: <base>/tokenizer
    clip_tokenizer_path: str | Path | None = None  # None = clip_path; diffusers: <base>/tokenizer_2
    text_len: int = 256  # LLM tokens kept after cropping the video template (1 frame: more, see top) [--text-len]
    text_len_2: int = 77  # CLIP tokens [--text-len-2]
    hidden_state_skip_layer: int = 2  # use hidden_states[-(skip+1)]; 0 = last layer [--hidden-state-skip-layer]
    apply_final_norm: bool = False  # run the LLM's final norm on an intermediate layer [--apply-final-norm]
    precision: str = "fp16"  # LLM weights dtype [--text-encoder-precision]
    precision_2: str = "fp16"  # CLIP weights dtype [--text-encoder-precision-2]
    prompt_template: str = "dit-llm-encode"  # template for 1-frame requests [--prompt-template]
    prompt_template_video: str = "dit-llm-encode-video"  # template for videos [--prompt-template-video]
    stream: bool = False  # the LLM's decoder layers stream through the device (--offload block)

    def __post_init__(self) -> None:
        for name in ("precision", "precision_2"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name} must be one of {sorted(PRECISIONS)}, got {getattr(self, name)!r}")
        for name in ("prompt_template", "prompt_template_video"):
            if getattr(self, name) not in PROMPT_TEMPLATES:
                raise ValueError(f"{name} must be one of {sorted(PROMPT_TEMPLATES)}, got {getattr(self, name)!r}")
        if self.text_len < 1 or self.text_len_2 < 1:
            raise ValueError("text_len and text_len_2 must be positive")
        if self.hidden_state_skip_layer < 0:
            raise ValueError("hidden_state_skip_layer must be >= 0")

    @classmethod
    def from_model_base(cls, base: str | Path, **overrides: object) -> TextEncoderConfig:
        """Paths for either layout: official (`text_encoder/` holds model + tokenizer, `text_encoder_2/` likewise)
        or diffusers (`text_encoder/`, `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`)."""
        base = Path(base)
        diffusers = (base / "tokenizer").is_dir()
        paths = {
            "llm_path": base / "text_encoder",
            "clip_path": base / "text_encoder_2",
            "llm_tokenizer_path": base / "tokenizer" if diffusers else None,
            "clip_tokenizer_path": base / "tokenizer_2" if diffusers else None,
        }
        return cls(**{**paths, **overrides})


@dataclass
class TextEmbeddings:
    """What the DiT is conditioned on, for a batch of B prompts."""

    llm_states: torch.Tensor  # (B, Lt, D_llm), the LLM's dtype; Lt = text_len for videos, more for 1 frame
    llm_mask: torch.Tensor  # (B, Lt) int64, 1 = real token
    clip_pooled: torch.Tensor  # (B, D_clip), CLIP's dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbeddings:
        """Move the tensors; `dtype` applies to the float tensors only (the mask keeps int64)."""
        return TextEmbeddings(
            self.llm_states.to(device=device, dtype=dtype),
            self.llm_mask.to(device=device),
            self.clip_pooled.to(device=device, dtype=dtype),
        )


def template_name(video_length: int, config: TextEncoderConfig) -> str:
    """The video template for frames > 1, the image template for a single frame (official data_type rule)."""
    return config.prompt_template_video if video_length > 1 else config.prompt_template


def _warn_truncated(tokenizer, texts: list[str], max_length: int, what: str) -> None:
    """Log which prompts lost tokens to truncation (counted with special tokens, as the model sees them)."""
    full = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    for i, ids in enumerate(full):
        if len(ids) > max_length:
            dropped = tokenizer.decode(ids[max_length - 1 :], skip_special_tokens=True)
            logger.warning(
                f"{what}: prompt {i} is {len(ids)} tokens, more than {max_length}; truncated, dropping: {dropped!r}"
            )


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report; we check the loading info ourselves and raise on real problems."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def loading(path: str | Path, what: str) -> Iterator[None]:
    """Turn transformers' / safetensors' errors about an unusable folder (missing or corrupt weights, config or
    tokenizer files) into one `CheckpointError` naming the folder; out-of-memory stays a fault."""
    try:
        yield
    except (CheckpointError, torch.OutOfMemoryError):
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"{path}: cannot load the {what} ({type(e).__name__}: {first[:200]})") from None


def check_loading(path: str | Path, info: dict, ignore: tuple[str, ...] = (), layers_from: int | None = None) -> None:
    """Fail on missing or mis-shaped weights (they would be random); unexpected keys with a dotted component in
    `ignore` (e.g. "lm_head" in "language_model.lm_head.weight"), and those of decoder layers >= `layers_from`
    (left out on purpose, see `_load_llm`), are expected and skipped silently."""
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    unexpected = sorted(
        k
        for k in info.get("unexpected_keys", ())
        if not set(k.split(".")) & set(ignore) and not _layer_at_or_after(k, layers_from)
    )
    if missing or mismatched:
        raise CheckpointError(f"{path}: missing weights {missing[:5]}, shape mismatches {mismatched[:5]}")
    if unexpected:
        logger.warning(f"{path}: ignoring {len(unexpected)} unexpected weights, e.g. {unexpected[:5]}")


def _layer_at_or_after(key: str, first: int | None) -> bool:
    """Whether `key` names a weight of decoder layer `first` or later ("...layers.<i>.")."""
    match = _LAYER_KEY.search(key)
    return first is not None and match is not None and int(match.group(1)) >= first


def _load_llm(
    path: str | Path, dtype: torch.dtype, device: torch.device | str, skip_last: int = 0
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The LLM's base model (no LM head) and its final norm. Accepts a base-model checkpoint (`LlamaModel`,
    diffusers layout) or a causal-LM checkpoint (`LlamaForCausalLM`, the official tree: the head's weights are
    skipped). A LLaVA-style checkpoint loads whole and keeps only its language model.

    `skip_last` > 0 builds the model without its last `skip_last` decoder layers (their weights are never read) and
    with an identity in place of the final norm, so the output is `hidden_states[-(skip_last + 1)]` of the full
    model: the layers whose output is never used cost neither memory nor time."""
    with loading(path, "LLM text encoder"), quiet_transformers():
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    text_config = getattr(config, "text_config", None) or config  # a LLaVA-style config nests the LLM's
    layers = text_config.num_hidden_layers
    if skip_last > layers:  # hidden_states has layers + 1 entries (embeddings first)
        raise ValueError(f"hidden_state_skip_layer {skip_last} > the LLM's {layers} layers")
    with loading(path, "LLM text encoder"), quiet_transformers():
        text_config.num_hidden_layers = layers - skip_last
        model, info = AutoModel.from_pretrained(
            path, config=config, dtype=dtype, local_files_only=True, output_loading_info=True
        )
        check_loading(path, info, ignore=("lm_head",), layers_from=layers - skip_last)
    if text_config is not config and hasattr(model, "language_model"):
        model = model.language_model  # LLaVA: (vision tower, projector, language model) -> language model
    norm = model.norm
    if skip_last > 0:
        model.norm = torch.nn.Identity()
    return model.to(device).eval().requires_grad_(False), norm.to(device).eval().requires_grad_(False)


def _load_clip(path: str | Path, dtype: torch.dtype, device: torch.device | str) -> torch.nn.Module:
    """CLIP's text tower; a full CLIPModel checkpoint (openai/clip-vit-large-patch14) loads its text half."""
    with loading(path, "CLIP text encoder"), quiet_transformers():
        model, info = CLIPTextModel.from_pretrained(path, dtype=dtype, local_files_only=True, output_loading_info=True)
        check_loading(path, info, ignore=("vision_model", "visual_projection", "text_projection", "logit_scale"))
    return model.to(device).eval().requires_grad_(False)


class LLMEncoder:
    """Per-token prompt states from a decoder-only LLM with the HunyuanVideo templates (docs/DESIGN.md §4)."""

    def __init__(
        self,
        path: str | Path,
        tokenizer_path: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        text_len: int = 256,
        hidden_state_skip_layer: int = 2,
        apply_final_norm: bool = False,
        stream: bool = False,
    ) -> None:
        with loading(tokenizer_path or path, "LLM tokenizer"):
            self.tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_path or path, padding_side="right", local_files_only=True
            )
        if self.tokenizer.pad_token is None:  # plain Llama-3 tokenizers have none; padded positions are masked out
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the model stops at the layer whose output is used; `final_norm` is its final RMSNorm
        home = "cpu" if stream else device  # streamed: read into host memory, the layers go through the device
        self.model, self.final_norm = _load_llm(path, dtype, home, skip_last=hidden_state_skip_layer)
        self.streamer = stream_layers(self.model, self.model.layers, torch.device(device)) if stream else None
        self.final_norm.to(device)
        self.device = torch.device(device)
        self.text_len = text_len
        self.skip = hidden_state_skip_layer
        self.apply_final_norm = apply_final_norm
        self._crop: dict[str, tuple[int, ...]] = {}

    def prefix_ids(self, template: str) -> tuple[int, ...]:
        """Token ids of the template text before "{}" (with BOS), cached per template."""
        if template not in self._crop:
            prefix = template.split("{}")[0]
            self._crop[template] = tuple(self.tokenizer(prefix, add_special_tokens=True)["input_ids"])
        return self._crop[template]

    def crop_start(self, template: str) -> int:
        """docs/DESIGN.md §4.3: crop_start = number of tokens of the template before "{}" (95 / 36 for Llama-3)."""
        return len(self.prefix_ids(template))

    @torch.inference_mode()
    def encode(
        self, prompts: list[str], template: str, max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (states (B, L, D), mask (B, L) int64), states = hidden_states[-(skip+1)] without the template
        prefix. `max_length`: tokens the LLM reads, prefix included (default text_len + the prefix, so L = text_len);
        L = max_length - crop_start(template)."""
        crop = self.crop_start(template)
        max_length = self.text_len + crop if max_length is None else max_length
        if max_length <= crop:
            raise ValueError(f"max_length {max_length} leaves no prompt token after the {crop}-token template prefix")
        texts = [template.format(p) for p in prompts]
        batch = self.tokenizer(
            texts, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt"
        )  # input_ids, attention_mask: (B, text_len + crop)
        _warn_truncated(self.tokenizer, texts, max_length, "LLM text encoder")
        if not torch.equal(batch["input_ids"][:, :crop], torch.tensor([self.prefix_ids(template)] * len(texts))):
            logger.warning("LLM tokenizer merged the template prefix with the prompt; crop_start may be off by one")
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        # = hidden_states[-(skip + 1)] of the full model: the model was built without its last `skip` layers
        states = self.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, L, D)
        if self.apply_final_norm and self.skip > 0:  # with skip 0 the output is already normed
            states = self.final_norm(states)
        return states[:, crop:], mask[:, crop:]  # (B, max_length - crop, D), (B, max_length - crop)

    def free(self) -> None:
        """Drop the weights (the tokenizer stays); the encoder cannot encode afterwards."""
        self.streamer = None
        self.model = self.final_norm = free_model(self.model)


class CLIPEncoder:
    """CLIP-L text tower: one pooled vector per prompt (the final-norm state at the end-of-text token)."""

    def __init__(
        self,
        path: str | Path,
        tokenizer_path: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        text_len: int = 77,
    ) -> None:
        with loading(tokenizer_path or path, "CLIP tokenizer"):
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path, local_files_only=True)
        self.model = _load_clip(path, dtype, device)
        self.device = torch.device(device)
        self.text_len = text_len

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> pooler_output (B, D). No padding mask is needed: attention is causal and the pooled token is
        the first end-of-text token, which sees no padding."""
        batch = self.tokenizer(
            prompts, max_length=self.text_len, padding="max_length", truncation=True, return_tensors="pt"
        )  # input_ids: (B, 77)
        _warn_truncated(self.tokenizer, prompts, self.text_len, "CLIP text encoder")
        return self.model(input_ids=batch["input_ids"].to(self.device)).pooler_output  # (B, D)

    def free(self) -> None:
        """Drop the weights (the tokenizer stays); the encoder cannot encode afterwards."""
        self.model = free_model(self.model)


def free_model(model: torch.nn.Module | None) -> None:
    """Move a model's weights off the accelerator and let them be collected; returns None to assign back. A model
    whose layers stream (`stream_layers`) is unhooked first, and the pinned host memory it held is returned too."""
    streamed = model is not None and getattr(model, "_offload", None) is not None
    if model is not None:
        unstream(model)  # hooks off, host copies back in place: then .to("meta") below drops them
        model.to("meta")  # releases storage even if someone else still holds a reference to the module
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        if streamed:  # the caching host allocator keeps freed pinned blocks; give the host RAM back
            torch.accelerator.empty_host_cache()
    return None


class TextEncoders:
    """Both encoders behind one call: `encode(prompts, video_length) -> TextEmbeddings`; `free()` afterwards."""

    def __init__(self, config: TextEncoderConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.llm = LLMEncoder(
            config.llm_path,
            config.llm_tokenizer_path,
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

    def template(self, video_length: int) -> str:
        """The template text used for a request of `video_length` frames."""
        return PROMPT_TEMPLATES[template_name(video_length, self.config)]

    def crop_start(self, video_length: int) -> int:
        """Template prefix length in tokens for a request of `video_length` frames."""
        return self.llm.crop_start(self.template(video_length))

    def llm_input_length(self) -> int:
        """Tokens the LLM reads for any request: text_len + the video template's prefix (the official rule; 351)."""
        return self.config.text_len + self.llm.crop_start(PROMPT_TEMPLATES[self.config.prompt_template_video])

    def encode(self, prompts: str | list[str], video_length: int) -> TextEmbeddings:
        """Encode B prompts for a request of `video_length` frames (picks the video or image template). The states
        hold llm_input_length() - crop_start(video_length) positions: text_len for a video, more for 1 frame."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states, mask = self.llm.encode(prompts, self.template(video_length), self.llm_input_length())
        return TextEmbeddings(states, mask, self.clip.encode(prompts))

    def free(self) -> None:
        """Release both models' weights (call after encoding, before the DiT runs)."""
        self.llm.free()
        self.clip.free()
