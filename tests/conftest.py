"""Shared test setup, and the tiny models several test modules read (written once per session: a model folder
costs seconds to write; tests treat them as read-only and copy one before changing it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from loguru import logger
from PIL import Image

from hyvideo.config import DiTConfig
from hyvideo.tiny import write_tiny_i2v_model, write_tiny_model


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    """cli.main() points loguru at the captured stderr of its test; put a plain handler back afterwards."""
    yield
    logger.remove()
    logger.add(sys.__stderr__, level="INFO")


@pytest.fixture(scope="session")
def i2v_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The image-to-video models of the i2v modules: each condition in the diffusers layout (seed 1; SkyReels seed
    3), token_replace and latent_concat in the official layout too, and two text-to-video folders."""
    base = tmp_path_factory.mktemp("i2v_models")
    out = {c: write_tiny_i2v_model(base / c, "diffusers", c, seed=1) for c in ("token_replace", "latent_concat")}
    for c in ("token_replace", "latent_concat"):
        out[f"official_{c}"] = write_tiny_i2v_model(base / f"official_{c}", "official", c, seed=1)
    out["skyreels"] = write_tiny_i2v_model(base / "skyreels", "diffusers", "skyreels", seed=3)
    out["t2v"] = write_tiny_model(base / "t2v", "diffusers", seed=1)
    # a text-to-video DiT whose temporal RoPE has 8 pairs (as the release's), so RIFLEx's pair 4 exists
    riflex = DiTConfig(hidden_size=64, heads=2, depth_double=1, depth_single=1, depth_refiner=1,
                       rope_axes=(16, 8, 8), text_states_dim=32, text_pool_dim=32)  # fmt: skip
    out["t2v_riflex"] = write_tiny_model(base / "t2v_riflex", "diffusers", seed=1, dit=riflex)
    return out


@pytest.fixture(scope="session")
def i2v_image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-square random image of another size than the i2v modules' videos."""
    path = tmp_path_factory.mktemp("img") / "first.png"
    Image.fromarray((np.random.RandomState(0).rand(50, 70, 3) * 255).astype(np.uint8)).save(path)
    return path
