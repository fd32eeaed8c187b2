"""Shared test setup, and the tiny models several test modules read (written once per session: a model folder
costs seconds to write; tests treat them as read-only and copy one before changing it)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger
from PIL import Image

from hyvideo.config import DiTConfig
from hyvideo.tiny import write_tiny15_model, write_tiny_i2v_model, write_tiny_model


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    """cli.main() points loguru at the captured stderr of its test; put a plain handler back afterwards."""
    yield
    logger.remove()
    logger.add(sys.__stderr__, level="INFO")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny convs and matmuls are
    dominated by thread synchronisation, and on a busy 2-core machine OpenMP spinning makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_v1(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """`tiny_v1(layout, seed)`: a text-to-video model folder (hyvideo.tiny, "official" or "diffusers" layout),
    written on first use and shared by the session."""
    folders: dict[tuple[str, int], Path] = {}

    def get(layout: str, seed: int) -> Path:
        if (layout, seed) not in folders:
            base = tmp_path_factory.mktemp(f"tiny_v1_seed{seed}")
            folders[layout, seed] = write_tiny_model(base / layout, layout, seed=seed)
        return folders[layout, seed]

    return get


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


class Tiny15(dict):
    """ "<layout>_<version>" -> a tiny HunyuanVideo 1.5 model of the same weights (seed 2), written when first
    asked for."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, key: str) -> Path:
        layout, version = key.split("_", 1)
        self[key] = write_tiny15_model(self.base / key, layout, version, seed=2)
        return self[key]


@pytest.fixture(scope="session")
def tiny15(tmp_path_factory: pytest.TempPathFactory) -> Tiny15:
    return Tiny15(tmp_path_factory.mktemp("tiny15"))


@pytest.fixture(scope="session")
def image15_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 48x80 image (a bucket of base 64: no resize) for the 1.5 image-to-video modules."""
    path = tmp_path_factory.mktemp("img15") / "first.png"
    Image.fromarray((np.random.RandomState(3).rand(48, 80, 3) * 255).astype(np.uint8)).save(path)
    return path
