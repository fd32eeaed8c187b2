"""RIFLEx for long videos: the RoPE tables against the published rule (thu-ml/RIFLEx: component k = 4 of the temporal
axis set to 0.9 * 2*pi / latent frames), the --riflex policy, and the tiny DiT fed a RIFLEx table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hyvideo.modules.dit as dit_module
from hyvideo.config import DiTConfig
from hyvideo.modules.dit import riflex_k
from hyvideo.modules.embeddings import (
    RIFLEX_K,
    TRAINED_FRAMES,
    riflex_applies,
    riflex_rope_freqs,
    rope_freqs,
    rope_table,
)
from hyvideo.pipeline import set_riflex
from hyvideo.tiny import random_dit

AXES, THETA = (16, 56, 56), 256.0  # the release's RoPE split and base


def latent_frames(video_length: int) -> int:
    return (video_length - 1) // 4 + 1


def plain_table(grid, axes, theta) -> torch.Tensor:
    """The table without RIFLEx, restated: per axis angle pos * theta^(-2j/d) in fp32, t-major, complex64."""
    cols = []
    pos = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij"))
    for i, d in enumerate(axes):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        cols.append(pos[i].reshape(-1, 1) * freqs[None])  # (T*H*W, d/2)
    angles = torch.cat(cols, dim=1)
    return torch.polar(torch.ones_like(angles), angles)


def published_riflex_table(grid, axes, theta, k: int) -> torch.Tensor:
    """RIFLEx restated from its paper/repo: the temporal frequency list, entry k-1 := 0.9 * 2*pi / L_test, with L_test
    the latent frames (= the temporal token count, patch 1); the other axes untouched."""
    T, H, W = grid
    table = plain_table(grid, axes, theta)
    omega = np.float32(0.9 * 2 * np.pi / T)  # float64 rule, stored in the fp32 frequency list
    t = torch.arange(T, dtype=torch.float32).repeat_interleave(H * W)  # t-major token order
    angle = t * torch.tensor(omega)
    table[:, k - 1] = torch.polar(torch.ones_like(angle), angle)
    return table


def test_without_riflex_the_table_is_unchanged_bit_for_bit():
    for grid, axes in (((33, 4, 6), AXES), ((5, 3, 2), (4, 10, 10)), ((66, 2, 2), AXES)):
        ours = rope_table(grid, axes, THETA)
        assert torch.equal(ours, rope_table(grid, axes, THETA, riflex_k=None))
        assert torch.equal(ours, plain_table(grid, axes, THETA)), grid


@pytest.mark.parametrize("video_length", [133, 201, 261, 385])
def test_riflex_table_is_the_published_formula(video_length):
    grid = (latent_frames(video_length), 3, 4)
    ours = rope_table(grid, AXES, THETA, riflex_k=RIFLEX_K)
    assert torch.equal(ours, published_riflex_table(grid, AXES, THETA, RIFLEX_K))
    changed = (ours != rope_table(grid, AXES, THETA)).any(dim=0).nonzero().flatten().tolist()
    assert changed == [RIFLEX_K - 1]  # one column: the temporal pair k (1-based), nothing else
    # one period of the new component now spans length/0.9 latent frames: the last frame is 90 % of a turn in
    last = torch.angle(ours[-1, RIFLEX_K - 1]).item() % (2 * math.pi)
    assert last == pytest.approx(0.9 * 2 * math.pi * (grid[0] - 1) / grid[0], abs=1e-4)


def test_why_k_is_4():
    """RIFLEx identifies k from where the model repeats: the component whose period (in latent frames) is nearest
    to the first repetition, ~48 latent frames (~8 s) for HunyuanVideo. With d_t = 16 and theta = 256 that is the
    4th pair: frequency 256^(-6/16) = 1/8 exactly, period 16*pi = 50.3 latent frames (~201 video frames)."""
    freqs = rope_freqs(AXES[0], THETA)
    periods = [round(2 * math.pi / f) for f in freqs.tolist()]
    k = min(range(len(periods)), key=lambda j: abs(periods[j] - 48)) + 1
    assert (k, periods[k - 1]) == (RIFLEX_K, 50)
    assert freqs[RIFLEX_K - 1].item() == 0.125


def test_riflex_rope_freqs_checks_and_copies():
    freqs = rope_freqs(16, THETA)
    before = freqs.clone()
    out = riflex_rope_freqs(freqs, 4, 66)
    assert torch.equal(freqs, before)  # input untouched
    assert out[3].item() == np.float32(0.9 * 2 * math.pi / 66) and torch.equal(out[:3], freqs[:3])
    assert torch.equal(out[4:], freqs[4:])
    for k in (0, 9):
        with pytest.raises(ValueError, match=r"outside 1\.\.8"):
            riflex_rope_freqs(freqs, k, 66)
    with pytest.raises(ValueError, match=">= 1 latent frame"):
        riflex_rope_freqs(freqs, 4, 0)


def test_policy():
    assert TRAINED_FRAMES == 129
    assert [riflex_applies("auto", n) for n in (1, 33, 125, 129, 133, 261)] == [False] * 4 + [True] * 2
    assert all(riflex_applies("on", n) for n in (1, 129, 261))
    assert not any(riflex_applies("off", n) for n in (1, 129, 261))
    assert riflex_applies("auto", 97, trained_frames=93)
    with pytest.raises(ValueError, match="'yes'"):
        riflex_applies("yes", 261)


# --- end to end through the tiny DiT ----------------------------------------------------------------------------------

# a tiny DiT whose temporal axis has 8 pairs (16 dims), like the release's, so that component 4 exists
CFG = DiTConfig(hidden_size=64, heads=2, depth_double=1, depth_single=1, depth_refiner=1, rope_axes=(16, 8, 8),
                text_states_dim=32, text_pool_dim=32)  # fmt: skip


def forward(monkeypatch, video_length: int, mode: str, table_fn=None) -> torch.Tensor:
    """One DiT forward for a video of video_length frames, with the DiT's RIFLEx choice set as the pipeline sets it
    (`riflex_k(mode, video_length, cfg)`); table_fn: a stand-in for the RoPE table builder."""
    monkeypatch.setattr(dit_module, "rope_table", table_fn or rope_table)
    model = random_dit(CFG, seed=7)
    model.riflex_k = riflex_k(mode, video_length, CFG)
    g = torch.Generator().manual_seed(0)
    T = latent_frames(video_length)
    x = torch.randn(1, 16, T, 4, 4, generator=g)
    txt, mask = torch.randn(1, 5, 32, generator=g), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), txt, mask, torch.randn(1, 32, generator=g), torch.tensor([6000.0]))


def test_dit_up_to_the_training_length_unchanged_with_auto(monkeypatch):
    for n in (5, 129):
        plain = forward(monkeypatch, n, "off")
        assert torch.equal(forward(monkeypatch, n, "auto"), plain), n


def test_dit_with_riflex_sees_only_the_temporal_component_k(monkeypatch):
    n = 261  # 66 latent frames
    ours = forward(monkeypatch, n, "auto")

    def published(grid, axes, theta, device=None, riflex_k=None):
        return published_riflex_table(grid, axes, theta, RIFLEX_K).to(device)

    assert torch.equal(ours, forward(monkeypatch, n, "off", table_fn=published))
    plain = forward(monkeypatch, n, "off")
    assert not torch.allclose(ours, plain, atol=1e-4)  # and that one frequency does matter

    # the same length rule on a neighbouring pair is another output
    def other_k(grid, axes, theta, device=None, riflex_k=None):
        return published_riflex_table(grid, axes, theta, RIFLEX_K + 1).to(device)

    assert not torch.allclose(ours, forward(monkeypatch, n, "off", table_fn=other_k), atol=1e-4)


def test_auto_only_where_the_rule_lowers_the_frequency():
    """From 133 to 177 frames (34..45 latent frames) 0.9 * 2 pi / L is above pair 4's 1/8: the rule would shorten its
    period, so auto leaves the table alone; from 181 frames (46 latent frames) on it lowers it."""
    cfg = DiTConfig()  # the release's (16, 56, 56) axes, base 256
    assert rope_freqs(16, 256.0)[RIFLEX_K - 1].item() == 0.125
    for n in range(133, 178, 4):
        assert riflex_applies("auto", n) and riflex_k("auto", n, cfg) is None, n
        assert 0.9 * 2 * math.pi / latent_frames(n) > 0.125
    for n in (181, 201, 261, 513):
        assert riflex_k("auto", n, cfg) == RIFLEX_K, n
    assert riflex_k("auto", 129, cfg) is None and riflex_k("off", 261, cfg) is None
    assert riflex_k("on", 5, cfg) == RIFLEX_K


def test_on_needs_the_component():
    tiny = DiTConfig(hidden_size=64, heads=2, depth_double=1, depth_single=1, depth_refiner=1, rope_axes=(4, 14, 14))
    with pytest.raises(ValueError, match="2 frequency pair"):
        riflex_k("on", 261, tiny)
    assert riflex_k("auto", 261, tiny) is None  # auto never applies what the DiT cannot take


def test_the_pipeline_sets_the_dit_inside_a_wrapper():
    """Under sequence parallelism the pipeline holds a wrapper module; the choice must reach the DiT it wraps."""

    class Wrapper(torch.nn.Module):
        def __init__(self, dit):
            super().__init__()
            self.dit = dit

    dit = random_dit(CFG, seed=1)
    set_riflex(Wrapper(dit), RIFLEX_K)
    assert dit.riflex_k == RIFLEX_K
    set_riflex(dit, None)
    assert dit.riflex_k is None
