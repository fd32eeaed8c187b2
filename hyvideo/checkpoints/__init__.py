"""Finding and loading weights: official `ckpts/` tree and diffusers-format folders."""

from hyvideo.checkpoints.common import CheckpointError

__all__ = ["CheckpointError"]
