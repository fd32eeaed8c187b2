"""HunyuanVideo 1.5 VAE: parity with diffusers, causality, exact chunking, spatial tiles, both layouts, memory."""

import json
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15
from test_vae import _peak_live_bytes  # the v1 VAE test's live-tensor probe, shared rather than copied

import hyvideo.modules.vae as vae_mod
from hyvideo.checkpoints.common import CheckpointError
from hyvideo.checkpoints.vae15 import (
    KEY_MAP,
    load_vae15,
    random_vae15,
    read_vae15_config,
    save_vae15,
    to_diffusers_keys,
    to_official_keys,
    verify_vae15,
)
from hyvideo.modules.vae import CausalConv3d
from hyvideo.modules.vae15 import (
    MIN_SLICE_FRAMES,
    TINY_VAE15,
    HYVideo15VAE,
    TilingConfig15,
    VAE15Config,
    build_vae15,
)

TOL = 1e-4  # fp32 parity bound (issue 16); measured at most 1.3e-5 (see each test)
# a second tiny config whose resamplers keep the width, so resnets change it and carry a 1x1 nin_shortcut
NO_MATCH = VAE15Config(
    block_out_channels=(8, 16, 32, 64, 64),
    layers_per_block=1,
    downsample_match_channel=False,
    upsample_match_channel=False,
)
RELEASE_PARAMS = 1_260_634_115  # encoder + decoder of the released 1.5 VAE (its official config.json); the same
# shapes as diffusers' default AutoencoderKLHunyuanVideo15 (checked key by key below)


# tiny models: one thread (tests/conftest.py one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ours() -> HYVideo15VAE:
    return random_vae15(TINY_VAE15, seed=3)


def _reference(model: HYVideo15VAE) -> AutoencoderKLHunyuanVideo15:
    kw = {k: v for k, v in model.config.to_diffusers().items() if not k.startswith("_")}
    ref = AutoencoderKLHunyuanVideo15(**kw).eval()
    ref.load_state_dict(to_diffusers_keys(model.state_dict()), strict=True)
    return ref


@pytest.fixture(scope="module")
def ref(ours) -> AutoencoderKLHunyuanVideo15:
    return _reference(ours)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- config, keys, parameter count -------------------------------------------------------------------------------------


def test_release_preset_has_the_diffusers_keys_and_the_release_parameter_count():
    model = build_vae15(VAE15Config())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in AutoencoderKLHunyuanVideo15().state_dict().items()}
    assert {k: ours[o] for o, k in zip(ours, to_diffusers_keys(dict.fromkeys(ours)), strict=True)} == theirs
    assert sum(v.numel() for v in model.state_dict().values()) == RELEASE_PARAMS
    assert "encoder.down.2.downsample.conv.conv.weight" in ours and "decoder.mid.attn_1.q.weight" in ours
    assert not any("nin_shortcut" in k for k in ours)  # the release's resamplers change the widths


@pytest.mark.parametrize("config", [VAE15Config(), NO_MATCH], ids=["release", "no-match"])
def test_key_map_round_trips_losslessly(config):
    keys = list(build_vae15(config).state_dict())
    sd = dict.fromkeys(keys, torch.zeros(0))
    mapped = to_diffusers_keys(sd)
    assert len(mapped) == len(keys) and to_official_keys(mapped).keys() == sd.keys()
    kw = {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}
    with torch.device("meta"):
        assert set(mapped) == set(AutoencoderKLHunyuanVideo15(**kw).state_dict())
    used = {a for a, _ in KEY_MAP if any(k.startswith(a.split("{")[0]) for k in keys)}
    assert used  # the table is exercised (every row whose fixed prefix occurs)


def test_config_round_trips_and_invariants():
    for cfg in (VAE15Config(), TINY_VAE15, NO_MATCH):
        assert VAE15Config.from_config_dict(cfg.to_official()) == cfg
        back = VAE15Config.from_config_dict(cfg.to_diffusers())  # diffusers has no sample_size: defaults
        assert back == cfg
    assert VAE15Config().to_official()["ffactor_spatial"] == 16 and VAE15Config().scaling_factor == 1.03682
    assert [d[2] for d in VAE15Config().downsamplers()] == [False, False, True, True]
    assert [u[2] for u in VAE15Config().upsamplers()] == [True, True, False, False]
    with pytest.raises(ValueError, match="levels"):
        VAE15Config(block_out_channels=(64, 64, 64, 64))
    with pytest.raises(ValueError, match="2 \\* latent_channels"):
        VAE15Config(block_out_channels=(8, 16, 32, 64, 48))
    with pytest.raises(ValueError, match="shift_factor"):
        VAE15Config.from_official({**VAE15Config().to_official(), "shift_factor": 0.1})
    with pytest.raises(ValueError, match=r"not a HunyuanVideo 1\.5 VAE"):
        VAE15Config.from_config_dict({"_class_name": "AutoencoderKLHunyuanVideo"})
    with pytest.raises(ValueError, match="multiples of 16"):
        TilingConfig15(tile_size=256, tile_stride=200)


# --- parity with diffusers ---------------------------------------------------------------------------------------------


# 4 latent channels: the encoder's output shortcut averages groups of 8 channels and the decoder's input shortcut
# repeats each latent 16 times (the release: 16 and 32), where TINY_VAE15 has 1 and 2
FEW_LATENTS = replace(TINY_VAE15, latent_channels=4)


@pytest.mark.parametrize("config", [TINY_VAE15, NO_MATCH, FEW_LATENTS], ids=["tiny", "no-match", "few-latents"])
def test_untiled_encode_decode_match_diffusers(config):
    """Measured: posterior mean and logvar within 1.3e-5, video within 4.7e-6 (outputs up to ~10 and ~2.3)."""
    model = random_vae15(config, seed=3).disable_tiling()
    ref = _reference(model)
    c = config.latent_channels
    video = _randn(1, 3, 9, 48, 64, seed=1)
    z = _randn(1, c, 4, 3, 4, seed=2)
    with torch.no_grad():
        want_post = ref.encode(video).latent_dist
        want_video = ref.decode(z).sample
    post = model.encode(video)
    assert post.mean.shape == (1, c, 3, 3, 4)
    assert _max(post.mean, want_post.mean) <= TOL and _max(post.logvar, want_post.logvar) <= TOL
    got = model.decode(z)
    assert got.shape == (1, 3, 13, 48, 64)
    assert want_video.abs().max() > 1  # a non-trivial output, so the tolerance means something
    assert _max(got, want_video) <= TOL


@pytest.mark.parametrize("channels_last", [True, False])
def test_convs_sliced_in_time_match_diffusers(ours, ref, monkeypatch, channels_last):
    """Large conv inputs are normalised and convolved a frame at a time; force that path everywhere, in both
    memory formats."""
    monkeypatch.setattr(vae_mod, "SLICE_BYTES", 1)
    ours.disable_tiling().set_min_slice(1).set_channels_last(channels_last)
    video, z = _randn(1, 3, 9, 32, 32, seed=13), _randn(1, 32, 3, 2, 3, seed=14)
    with torch.no_grad():
        want_mean, want_video = ref.encode(video).latent_dist.mean, ref.decode(z).sample
    try:
        assert _max(ours.encode(video).mean, want_mean) <= TOL
        assert _max(ours.decode(z), want_video) <= TOL
    finally:
        ours.set_min_slice(MIN_SLICE_FRAMES).set_channels_last(True)


def test_a_chunk_is_one_conv_call_in_channels_last(ours, monkeypatch):
    """The decoder's speed rule: every 3x3x3 conv of a chunk (5 frames at most) is one call on a channels-last input,
    however small the slice budget (1-frame slices and the reorder to oneDNN's layout cost ~1/3 of the decode)."""
    monkeypatch.setattr(vae_mod, "SLICE_BYTES", 1)
    calls: list[tuple[int, bool]] = []
    conv3d = vae_mod.conv3d

    def counting(x, weight, bias, stride=1):
        if weight.shape[2:] == (3, 3, 3):
            calls.append((x.shape[2], x.is_contiguous(memory_format=torch.channels_last_3d)))
        return conv3d(x, weight, bias, stride)

    monkeypatch.setattr(vae_mod, "conv3d", counting)
    ours.disable_tiling()
    ours.decode(_randn(1, 32, 2, 2, 2, seed=29))  # 2 latents -> 5 frames, the default first chunk
    convs = sum(m.conv.kernel_size == (3, 3, 3) for m in ours.decoder.modules() if isinstance(m, CausalConv3d))
    assert len(calls) == convs
    assert all(channels_last for _, channels_last in calls)


@pytest.mark.parametrize(("overlap", "stride"), [(0.25, 48), (0.125, 112)])
@pytest.mark.parametrize("mode", ["tiles", "chunked"])
def test_tiled_decode_and_encode_match_diffusers_tiles(ours, ref, overlap, stride, mode):
    """diffusers' enable_tiling with the same tile and overlap (0.25: its default; 0.125: the official choice); our
    time chunks change nothing, so the chunked mode matches too. Measured: <= 4e-6 (decode), 1.3e-5 (encode)."""
    size = 64 if overlap == 0.25 else 128
    ref.enable_tiling(size, size, size // 16, size // 16, overlap)
    ours.tiling = TilingConfig15(mode=mode, tile_size=size, tile_stride=stride, chunk_latents=1, encode_tiles=True)
    h, w = (5, 7) if size == 64 else (9, 11)  # 2 x 3 (2 x 2) tiles in the latent grid
    z = _randn(1, 32, 3, h, w, seed=5)
    video = _randn(1, 3, 5, 16 * h, 16 * w, seed=4)
    with torch.no_grad():
        want_video = ref.decode(z).sample
        want_mean = ref.encode(video).latent_dist.mean
    got_video = ours.decode(z)
    assert _max(got_video, want_video) <= TOL
    assert _max(ours.encode(video).mean, want_mean) <= TOL
    ref.use_tiling = False
    assert _max(got_video, ours.disable_tiling().decode(z)) > 1e-2  # tiling really happened


def test_spatial_tiles_differ_from_the_untiled_decode_exactly_as_diffusers_tiles_do(ours, ref):
    """Blending overlapping spatial tiles is the one approximation (time chunks are exact). Our tiled decode at the
    official shape (128 px tiles, stride 112 = overlap 0.125) differs from the untiled decode by a relative mean error
    of 0.439 on this random tiny model (global attention over random weights: a trained VAE's tiles agree far
    better), the same figure as diffusers' own tiled decode to 1e-6; 0.335 at overlap 0.25 (stride 96)."""
    z = _randn(1, 32, 3, 9, 11, seed=9)
    want = ours.disable_tiling().decode(z)
    scale = want.abs().mean()
    ours.tiling = TilingConfig15(tile_size=128, tile_stride=112)
    ref.enable_tiling(128, 128, 8, 8, 0.125)
    with torch.no_grad():
        theirs = ref.decode(z).sample
    ref.use_tiling = False
    rel = ((ours.decode(z) - want).abs().mean() / scale).item()
    rel_theirs = ((theirs - want).abs().mean() / scale).item()
    print(f"tiled relative mean error vs untiled: ours {rel:.4f}, diffusers {rel_theirs:.4f}")
    assert abs(rel - rel_theirs) <= 1e-5
    assert 0.01 < rel < 0.5


# --- causality and exact chunking --------------------------------------------------------------------------------------


def test_encoder_and_decoder_are_causal_with_the_real_norms(ours):
    """No layer mixes statistics over frames (RMS norm per position), so prefixes are exact without any stand-in."""
    ours.disable_tiling()
    video = _randn(1, 3, 17, 32, 32, seed=6)
    z_all = ours.encode(video).mean  # (1, 32, 5, 2, 2)
    for k in (0, 1, 3):
        assert _max(ours.encode(video[:, :, : 1 + 4 * k]).mean, z_all[:, :, : 1 + k]) <= 1e-5
    x_all = ours.decode(z_all)
    for k in (0, 2):
        assert _max(ours.decode(z_all[:, :, : 1 + k]), x_all[:, :, : 1 + 4 * k]) <= 1e-5


@pytest.mark.parametrize("n", [1, 2, 3])
def test_chunked_decode_and_encode_equal_the_whole_clip(ours, n):
    """Measured on CPU: decode bit-identical, encode within 2e-6; 1e-5 allows another conv backend's rounding."""
    z, video = _randn(1, 32, 7, 3, 4, seed=8), _randn(1, 3, 21, 48, 32, seed=18)
    ours.disable_tiling()
    want_video, want_mean = ours.decode(z), ours.encode(video).mean
    ours.tiling = TilingConfig15(mode="chunked", chunk_latents=n)
    assert ours.decode_steps(z.shape) == len(range(n + 1, 7, n)) + 1
    assert _max(ours.decode(z), want_video) <= 1e-5
    assert _max(ours.encode(video).mean, want_mean) <= 1e-5


def test_a_batch_decodes_and_encodes_like_its_samples(ours):
    """Chunks, spatial tiles and the cached attention keys keep the batch axis apart."""
    ours.tiling = TilingConfig15(tile_size=64, tile_stride=48, chunk_latents=1, encode_tiles=True)
    z, video = _randn(2, 32, 3, 5, 4, seed=26), _randn(2, 3, 9, 80, 64, seed=27)
    got_video, got_mean = ours.decode(z), ours.encode(video).mean
    for i in range(2):
        assert _max(got_video[i : i + 1], ours.decode(z[i : i + 1])) <= 1e-5
        assert _max(got_mean[i : i + 1], ours.encode(video[i : i + 1]).mean) <= 1e-5


def test_chunks_without_the_carried_state_would_differ(ours):
    """The state matters: decoding the second chunk on its own (fresh causal padding, no cached keys) differs."""
    z = _randn(1, 32, 4, 3, 4, seed=19)
    whole = ours.disable_tiling().decode(z)
    alone = ours.decoder(z[:, :, 2:3])
    assert alone.shape[2] == 1 and _max(alone, whole[:, :, 5:6]) > 1e-2


def test_encode_rejects_frame_counts_and_sizes_it_cannot_compress(ours):
    with pytest.raises(ValueError, match="T = 4k \\+ 1"):
        ours.encode(_randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        ours.encode(_randn(1, 3, 5, 24, 32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_decode_is_close_to_fp32(dtype):
    model = random_vae15(TINY_VAE15, seed=3)
    z = _randn(1, 32, 3, 3, 3, seed=10)
    want = model.disable_tiling().decode(z)
    got = model.to(dtype).decode(z)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - want).abs().mean() / want.abs().mean() < 0.03


def test_decode_latents_applies_the_scaling_factor_and_clamps(ours):
    z = _randn(1, 32, 2, 3, 3, seed=11)
    ours.disable_tiling()
    raw = ours.decode(z)
    latents = z * TINY_VAE15.scaling_factor
    assert _max(ours.decode_latents(latents, clamp=False), raw) <= 1e-5
    assert (raw.abs() > 1).sum() > 10  # the random decoder overshoots: the clamp has work to do
    assert torch.equal(ours.decode_latents(latents), ours.decode_latents(latents, clamp=False).clamp(-1, 1))
    video = _randn(1, 3, 5, 32, 32, seed=20)
    assert torch.equal(ours.encode_latents(video), ours.encode(video).mean * TINY_VAE15.scaling_factor)


@pytest.mark.parametrize(
    ("tiling", "shape", "passes"),
    [
        (None, (1, 32, 4, 5, 7), 1),
        # 2 x 3 spatial tiles (4 latents, stride 3, over 5 x 7) x chunks [0, 3), [3, 5), [5, 7)
        (TilingConfig15(tile_size=64, tile_stride=48, chunk_latents=2), (1, 32, 7, 5, 7), 2 * 3 * 3),
        (TilingConfig15(mode="tiles", tile_size=64, tile_stride=48), (1, 32, 7, 5, 7), 2 * 3),
        (TilingConfig15(), (1, 32, 2, 4, 4), 1),  # one tile, one chunk (the first reads chunk_latents + 1)
    ],
    ids=["untiled", "chunked", "tiles", "small"],
)
def test_decode_reports_progress_per_pass_and_output_is_unchanged(ours, tiling, shape, passes):
    ours.tiling = tiling or TilingConfig15(enabled=False)
    z = _randn(*shape, seed=25)
    calls: list[tuple[int, int]] = []
    got = ours.decode(z, progress=lambda done, total: calls.append((done, total)))
    assert ours.decode_steps(z.shape) == passes
    assert calls == [(i, passes) for i in range(1, passes + 1)]
    assert torch.equal(got, ours.decode(z))


def test_chunked_decode_working_set_does_not_grow_with_the_clip(ours):
    """Peak live tensor bytes of a chunked decode: 3x the latents adds the longer output and the attention keys, not
    another set of activations."""
    ours.tiling = TilingConfig15(chunk_latents=1)
    short, long = _randn(1, 32, 3, 2, 2, seed=22), _randn(1, 32, 9, 2, 2, seed=22)
    peak_short = _peak_live_bytes(lambda: ours.decode(short))
    peak_long = _peak_live_bytes(lambda: ours.decode(long))
    video_growth = 3 * 4 * (9 - 3) * 32 * 32 * 4  # (B, 3, frames, 32, 32) float32
    kv_growth = 2 * 6 * 2 * 2 * TINY_VAE15.block_out_channels[-1] * 4  # cached keys and values of 6 more latents
    assert peak_long - peak_short <= 1.5 * (video_growth + kv_growth)
    ours.disable_tiling()
    whole_long = _peak_live_bytes(lambda: ours.decode(long))
    print(f"peak live bytes: chunked {peak_short} (3 latents) {peak_long} (9), untiled {whole_long} (9)")
    assert whole_long > 2 * peak_long  # the bound is real: the whole clip needs much more


def test_tiled_decode_working_set_does_not_grow_with_the_frame_size(ours):
    """Peak live tensor bytes with 32 px tiles: a 3x wider frame adds the wider output and the blend strips kept
    between tiles, not wider activations."""
    ours.tiling = TilingConfig15(tile_size=32, tile_stride=16, chunk_latents=1)
    narrow, wide = _randn(1, 32, 3, 2, 3, seed=28), _randn(1, 32, 3, 2, 9, seed=28)
    peak_narrow = _peak_live_bytes(lambda: ours.decode(narrow))
    peak_wide = _peak_live_bytes(lambda: ours.decode(wide))
    video_growth = 3 * 9 * 32 * (9 - 3) * 16 * 4  # (B, 3, 9 frames, 32, 16 px more per latent column) float32
    strips = 3 * 9 * 16 * 32 * (9 - 3) * 4  # 16 px bottom strips of 32 px tiles kept for the row below, per column
    ours.disable_tiling()
    whole_wide = _peak_live_bytes(lambda: ours.decode(wide))
    print(f"peak live bytes: tiled {peak_narrow} (3 latents wide) {peak_wide} (9), untiled {whole_wide} (9)")
    assert peak_wide - peak_narrow <= 1.2 * (video_growth + strips)  # measured 1.007x
    assert whole_wide > 2 * peak_wide


# --- checkpoints -------------------------------------------------------------------------------------------------------


def test_both_layouts_load_to_the_same_weights_and_diffusers_reads_ours(ours, tmp_path):
    official = save_vae15(ours, tmp_path / "official" / "vae", "official")
    diffusers_dir = save_vae15(ours, tmp_path / "diffusers" / "vae", "diffusers")
    assert read_vae15_config(official)[1] == "official" and read_vae15_config(diffusers_dir)[1] == "diffusers"
    verify_vae15(official)
    verify_vae15(diffusers_dir)
    want = ours.state_dict()
    for d in (official, diffusers_dir):
        model = load_vae15(d)
        assert model.config == TINY_VAE15
        assert model.state_dict().keys() == want.keys()
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    theirs = AutoencoderKLHunyuanVideo15.from_pretrained(diffusers_dir)
    assert torch.equal(
        theirs.decoder.up_blocks[0].upsamplers[0].conv.conv.weight, ours.decoder.up[0].upsample.conv.conv.weight
    )
    save_vae15(load_vae15(diffusers_dir), tmp_path / "again", "official")  # official -> diffusers -> official
    assert (tmp_path / "again" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        official / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    assert load_vae15(official, dtype=torch.bfloat16).decoder.conv_in.conv.weight.dtype == torch.bfloat16


def test_loading_errors_name_the_file_and_the_keys(ours, tmp_path):
    d = save_vae15(ours, tmp_path / "vae", "diffusers")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [8, 16, 32, 64, 48]}))
    with pytest.raises(CheckpointError, match=r"not a usable HunyuanVideo 1\.5 VAE config"):
        load_vae15(d)
    (d / "config.json").write_text(json.dumps({**cfg, "layers_per_block": 2}))
    with pytest.raises(CheckpointError, match=r"diffusers layout.*missing keys"):
        load_vae15(d)
    with pytest.raises(CheckpointError, match=r"diffusers layout.*missing keys"):
        verify_vae15(d)  # the same verdict from the headers alone
    (d / "config.json").write_text(json.dumps(TINY_VAE15.to_official()))  # diffusers names under an official config
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_vae15(d)
    (d / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"expected diffusion_pytorch_model\.safetensors"):
        load_vae15(d)
    with pytest.raises(ValueError, match="layout"):
        save_vae15(ours, tmp_path / "x", "pt")
