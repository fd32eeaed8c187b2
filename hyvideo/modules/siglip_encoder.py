"""The image encoder of HunyuanVideo 1.5 image-to-video (docs/DESIGN.md §20.5): FLUX.1-Redux-dev's SigLIP vision
tower (so400m, patch 14, 384 px).

  image (already resized and centre-cropped to the video's size by the caller, as both references do)
  -> RGB -> bicubic resize to 384 x 384, x / 255, (x - 0.5) / 0.5 (the folder's preprocessor_config.json)
  -> SiglipVisionModel -> last_hidden_state (post-layernorm)     (1, 729, 1152)

Folders: official `vision_encoder/siglip/{image_encoder, feature_extractor}/`, diffusers `image_encoder/` and
`feature_extractor/`. The preprocessing runs on PIL (`SiglipImageProcessorPil`), what transformers 4 did and the
official code was written against, whether or not torchvision is installed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import SiglipVisionModel
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from hyvideo.modules.text_encoders import check_loading, free_model, loading, quiet_transformers


class VisionEncoder15:
    """SigLIP states of one image: (1, N, D), N = (size / patch)^2 (729 x 1152 for the release)."""

    def __init__(self, model: SiglipVisionModel, processor: SiglipImageProcessorPil, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, model: Path, processor: Path, dtype: torch.dtype, device: torch.device | str) -> VisionEncoder15:
        """From the image_encoder folder (weights + config) and the feature_extractor folder (preprocessing)."""
        with loading(processor, "SigLIP image processor"), quiet_transformers():
            image_processor = SiglipImageProcessorPil.from_pretrained(processor, local_files_only=True)
        with loading(model, "SigLIP image encoder"), quiet_transformers():
            encoder, info = SiglipVisionModel.from_pretrained(
                model, dtype=dtype, local_files_only=True, output_loading_info=True
            )
        check_loading(model, info)
        return cls(encoder.to(device).eval().requires_grad_(False), image_processor, torch.device(device))

    @property
    def tokens(self) -> int:
        """States per image: one per patch (729 for the release)."""
        config = self.model.config
        return (config.image_size // config.patch_size) ** 2

    @torch.inference_mode()
    def encode(self, image: Image.Image) -> torch.Tensor:
        """One image -> last_hidden_state (1, N, D) in the model's dtype."""
        pixels = self.processor.preprocess(images=image, do_convert_rgb=True, return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(self.device, self.model.dtype)).last_hidden_state  # (1, N, D)

    def free(self) -> None:
        """Drop the weights (the processor stays); the encoder cannot encode afterwards."""
        self.model = free_model(self.model)
