"""884-16c-hy causal VAE: parity with diffusers, causality, tiling, loading both layouts."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo

import hyvideo.modules.vae as vae_mod
from hyvideo.checkpoints.common import CheckpointError
from hyvideo.checkpoints.vae import load_vae, random_vae, save_vae_diffusers, save_vae_official
from hyvideo.modules.vae import HYVideoVAE, TilingConfig, VAEConfig, build_vae

# every official VAE key with its shape (docs/DESIGN.md §1.5)
KEYS_JSON = Path(__file__).resolve().parent / "data" / "official_vae_keys.json"
TINY = VAEConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=4)
TOL = 1e-4


# tiny models: one thread (tests/conftest.py one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ours() -> HYVideoVAE:
    return random_vae(TINY, seed=3)


@pytest.fixture(scope="module")
def ref(ours) -> AutoencoderKLHunyuanVideo:
    kw = {k: v for k, v in TINY.to_diffusers().items() if not k.startswith("_")}
    model = AutoencoderKLHunyuanVideo(**kw).eval()
    model.load_state_dict(ours.state_dict(), strict=True)  # identical key names, no map
    return model


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _ref_untiled(ref: AutoencoderKLHunyuanVideo) -> AutoencoderKLHunyuanVideo:
    ref.disable_tiling()
    ref.use_framewise_encoding = ref.use_framewise_decoding = False  # diffusers tiles time even without tiling
    return ref


def _frame_local_norm_affine(norm: torch.nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm statistics per frame, (B, C, T, 1, 1): makes the whole network causal so the conv padding, the
    chunk caches and the attention mask can be checked exactly (real GroupNorm spans all frames, docs/DESIGN.md §3)."""
    b, c, t = x.shape[:3]
    xg = x.float().reshape(b, norm.num_groups, c // norm.num_groups, t, -1)
    var, mean = torch.var_mean(xg, dim=(2, 4), unbiased=False, keepdim=True)  # (B, G, 1, T, 1)
    scale = torch.rsqrt(var + norm.eps) * norm.weight.reshape(1, -1, 1, 1, 1).reshape(1, norm.num_groups, -1, 1, 1)
    shift = norm.bias.reshape(1, norm.num_groups, -1, 1, 1) - mean * scale
    return scale.reshape(b, c, t, 1, 1), shift.reshape(b, c, t, 1, 1)


# --- config and keys --------------------------------------------------------------------------------------------------


def test_full_size_preset_has_exactly_the_official_keys_and_shapes():
    expected = {k: tuple(v) for k, v in json.loads(KEYS_JSON.read_text())["keys"].items()}
    model = build_vae(VAEConfig.hy_884_16c())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert all(v.is_meta for v in model.state_dict().values())


def test_config_round_trips_and_invariants():
    for cfg in (VAEConfig(), TINY):
        assert VAEConfig.from_official(cfg.to_official()) == cfg
        assert VAEConfig.from_config_dict(cfg.to_diffusers()) == VAEConfig.from_diffusers(cfg.to_diffusers())
        assert VAEConfig.from_config_dict(cfg.to_diffusers()).block_out_channels == cfg.block_out_channels
    assert VAEConfig().strides() == [(1, 2, 2), (2, 2, 2), (2, 2, 2), None]
    with pytest.raises(ValueError, match="does not divide"):
        VAEConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=3)
    with pytest.raises(ValueError, match="time_compression_ratio"):
        VAEConfig(time_compression_ratio=8)
    with pytest.raises(ValueError, match="down_block_types"):
        VAEConfig.from_official({**VAEConfig().to_official(), "down_block_types": ["Other"] * 4})
    with pytest.raises(ValueError, match="half the tile"):
        TilingConfig(tile_size=64, tile_stride=16)


# --- parity with diffusers -----------------------------------------------------------------------------------------


def test_untiled_encode_decode_match_diffusers(ours, ref):
    ours.disable_tiling()
    ref = _ref_untiled(ref)
    video = _randn(1, 3, 17, 32, 48, seed=1)
    z = _randn(1, 16, 6, 5, 6, seed=2)
    with torch.no_grad():
        want_post = ref.encode(video).latent_dist
        want_video = ref.decode(z).sample
    post = ours.encode(video)
    assert post.mean.shape == (1, 16, 5, 4, 6)
    assert (post.mean - want_post.mean).abs().max() <= TOL
    assert (post.logvar - want_post.logvar).abs().max() <= TOL
    got = ours.decode(z)
    assert got.shape == (1, 3, 21, 40, 48)
    assert want_video.abs().max() > 1  # a non-trivial output, so the tolerance means something
    assert (got - want_video).abs().max() <= TOL


def test_convs_sliced_in_time_match_diffusers(ours, ref, monkeypatch):
    """Large conv inputs are normalised, upsampled and convolved a frame at a time; force that path everywhere."""
    monkeypatch.setattr(vae_mod, "SLICE_BYTES", 1)
    ours.disable_tiling()
    ref = _ref_untiled(ref)
    video = _randn(1, 3, 13, 16, 24, seed=13)
    z = _randn(1, 16, 4, 3, 4, seed=14)
    with torch.no_grad():
        want_mean = ref.encode(video).latent_dist.mean
        want_video = ref.decode(z).sample
    assert (ours.encode(video).mean - want_mean).abs().max() <= TOL
    assert (ours.decode(z) - want_video).abs().max() <= TOL


def test_channels_last_convs_give_the_same_video(ours):
    z = _randn(1, 16, 3, 4, 5, seed=15)
    ours.disable_tiling()
    want = ours.set_channels_last(False).decode(z)
    got = ours.set_channels_last(True).decode(z)
    ours.set_channels_last(False)
    assert (got - want).abs().max() <= TOL


def test_tiled_encode_decode_match_diffusers(ours, ref):
    """Spatial tiles 32 px stride 24, temporal tiles 8 frames stride 4, on both sides; several tiles in each axis."""
    ref.enable_tiling(32, 32, 8, 24, 24, 4)
    ref.use_framewise_encoding = ref.use_framewise_decoding = True
    ours.tiling = TilingConfig(mode="tiles", tile_size=32, tile_stride=24, tile_frames=8, tile_stride_frames=4)
    video = _randn(1, 3, 17, 40, 56, seed=4)
    z = _randn(1, 16, 5, 5, 7, seed=5)
    with torch.no_grad():
        want_mean = ref.encode(video).latent_dist.mean
        want_video = ref.decode(z).sample
    got_mean = ours.encode(video).mean
    got_video = ours.decode(z)
    assert got_mean.shape == want_mean.shape == (1, 16, 5, 5, 7)
    assert (got_mean - want_mean).abs().max() <= TOL
    assert got_video.shape == want_video.shape == (1, 3, 17, 40, 56)
    assert (got_video - want_video).abs().max() <= TOL
    ours.disable_tiling()
    assert (ours.decode(z) - got_video).abs().max() > 1e-2  # tiling really happened


@pytest.mark.parametrize("latents", [4, 5, 6])
def test_time_tiling_starts_where_diffusers_and_the_official_vae_start_it(ours, ref, latents):
    """Tiles of 16 frames (4 latents) stride 12, one spatial tile: the official VAE and diffusers tile a clip in time
    from tile_frames / 4 + 1 latents (decode) and tile_frames + 1 frames (encode) on, i.e. 65 frames at the release's
    64; a clip of exactly that length used to decode and encode untiled here (issue 13 item 13)."""
    ref.enable_tiling(32, 32, 16, 24, 24, 12)
    ref.use_framewise_encoding = ref.use_framewise_decoding = True
    ours.tiling = TilingConfig(mode="tiles", tile_size=32, tile_stride=24, tile_frames=16, tile_stride_frames=12)
    z = _randn(1, 16, latents, 3, 4, seed=23)
    video = _randn(1, 3, 4 * (latents - 1) + 1, 24, 32, seed=24)
    with torch.no_grad():
        want_video = ref.decode(z).sample
        want_mean = ref.encode(video).latent_dist.mean
    got_video, got_mean = ours.decode(z), ours.encode(video).mean
    assert got_video.shape == want_video.shape and got_mean.shape == want_mean.shape
    assert (got_video - want_video).abs().max() <= TOL
    assert (got_mean - want_mean).abs().max() <= TOL
    ours.disable_tiling()
    tiled_in_time = (ours.decode(z) - got_video).abs().max() > 1e-2
    assert tiled_in_time == (latents > 4)  # 4 latents (13 frames) fit one tile; 5 (17 frames) already do not


# --- causality ---------------------------------------------------------------------------------------------------------


def test_encoder_and_decoder_are_causal(ours, monkeypatch):
    monkeypatch.setattr(vae_mod, "norm_affine", _frame_local_norm_affine)
    ours.disable_tiling()
    video = _randn(1, 3, 17, 16, 16, seed=6)
    z_all = ours.encode(video).mean  # (1, 16, 5, 2, 2)
    for k in (0, 1, 3):
        z_k = ours.encode(video[:, :, : 1 + 4 * k]).mean
        assert torch.allclose(z_k, z_all[:, :, : 1 + k], atol=1e-4)
    x_all = ours.decode(z_all)
    for k in (0, 2):
        assert torch.allclose(ours.decode(z_all[:, :, : 1 + k]), x_all[:, :, : 1 + 4 * k], atol=1e-4)


def test_real_group_norm_is_the_only_non_causal_part(ours):
    ours.disable_tiling()
    video = _randn(1, 3, 17, 16, 16, seed=6)
    prefix = ours.encode(video[:, :, :5]).mean
    whole = ours.encode(video).mean[:, :, :2]
    assert (prefix - whole).abs().max() > 1e-3  # with clip-wide GroupNorm the prefix sees the future statistics


# --- tiling and chunked decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "latents"), [("tiles", 2), ("chunked", 3)])
def test_video_within_one_tile_is_identical_with_tiling_on_or_off(ours, mode, latents):
    """32x32 px and 5 frames fit a 32 px / 8 frame tile (the official rule: at most 8 / 4 latents); 9 frames fit
    the first chunk of 2 + 1 latents."""
    z = _randn(1, 16, latents, 4, 4, seed=7)
    ours.disable_tiling()
    off = ours.decode(z)
    ours.tiling = TilingConfig(
        mode=mode, tile_size=32, tile_stride=24, tile_frames=8, tile_stride_frames=4, chunk_latents=2
    )
    assert torch.equal(ours.decode(z), off)


def test_chunked_decode_cache_is_exact_with_frame_local_norms(ours, monkeypatch):
    monkeypatch.setattr(vae_mod, "norm_affine", _frame_local_norm_affine)
    z = _randn(1, 16, 8, 6, 5, seed=8)
    ours.disable_tiling()
    want = ours.decode(z)
    for n in (1, 2, 3):
        ours.tiling = TilingConfig(mode="chunked", chunk_latents=n)  # one spatial tile
        assert (ours.decode(z) - want).abs().max() <= 1e-5


def test_chunked_decode_is_close_to_untiled_and_closer_than_tiles(ours):
    """Real GroupNorm: chunks normalise with their own statistics. Measured on this tiny random model (whose random
    weights amplify any change): relative mean error 0.40 for chunks of 2 latents vs 1.09 for official-style tiles of
    the same length; the first chunk is exact."""
    z = _randn(1, 16, 9, 4, 4, seed=9)
    ours.disable_tiling()
    want = ours.decode(z)
    scale = want.abs().mean()
    ours.tiling = TilingConfig(mode="chunked", chunk_latents=2)
    got = ours.decode(z)
    rel = ((got - want).abs().mean() / scale).item()
    assert torch.equal(got[:, :, :9], ours.disable_tiling().decode(z[:, :, :3]))  # first chunk (3 latents): exact
    ours.tiling = TilingConfig(mode="tiles", tile_frames=8, tile_stride_frames=4)
    rel_tiles = ((ours.decode(z) - want).abs().mean() / scale).item()
    print(f"chunked relative mean error {rel:.4f}, tiles {rel_tiles:.4f}")
    assert 0 < rel < 0.45
    assert rel < rel_tiles / 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_decode_is_close_to_fp32(dtype):
    model = random_vae(TINY, seed=3)
    z = _randn(1, 16, 4, 4, 4, seed=10)
    want = model.disable_tiling().decode(z)
    got = model.to(dtype).decode(z)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - want).abs().mean() / want.abs().mean() < 0.03


def test_decode_latents_applies_the_scaling_factor(ours):
    z = _randn(1, 16, 2, 4, 4, seed=11)
    ours.disable_tiling()
    latents = z * TINY.scaling_factor
    raw = ours.decode(latents / TINY.scaling_factor)
    assert torch.allclose(raw, ours.decode(z), atol=1e-5)  # the scaling factor is divided out
    assert (raw.abs() > 1).sum() > 10  # the random decoder overshoots: the clamp below has work to do
    assert torch.equal(ours.decode_latents(latents), raw.clamp(-1, 1))
    assert torch.equal(ours.decode_latents(latents, clamp=False), raw)


@pytest.mark.parametrize(
    ("tiling", "shape", "passes"),
    [
        (None, (1, 16, 4, 5, 7), 1),
        # 2 x 3 spatial tiles (4 latents, stride 3, over 5 x 7) x chunks [0, 3), [3, 5), [5, 7)
        (TilingConfig(mode="chunked", tile_size=32, tile_stride=24, chunk_latents=2), (1, 16, 7, 5, 7), 2 * 3 * 3),
        # 2 x 3 spatial tiles x temporal tiles at latents 0, 1, ..., 6 (2 latents, stride 1)
        (
            TilingConfig(mode="tiles", tile_size=32, tile_stride=24, tile_frames=8, tile_stride_frames=4),
            (1, 16, 7, 5, 7),
            2 * 3 * 7,
        ),
        (TilingConfig(), (1, 16, 2, 4, 4), 1),  # one tile, one chunk (the first reads chunk_latents + 1)
        # only the width needs tiles: 1 x 4 spatial tiles x chunks [0, 2), [2, 3)
        (TilingConfig(tile_size=32, tile_stride=24), (1, 16, 3, 3, 10), 1 * 4 * 2),
    ],
    ids=["untiled", "chunked", "tiles", "small", "wide"],
)
def test_decode_reports_progress_per_pass_and_output_is_unchanged(ours, tiling, shape, passes):
    ours.tiling = tiling or TilingConfig(enabled=False)
    z = _randn(*shape, seed=25)
    calls: list[tuple[int, int]] = []
    got = ours.decode(z, progress=lambda done, total: calls.append((done, total)))
    assert ours.decode_steps(z.shape) == passes
    assert calls == [(i, passes) for i in range(1, passes + 1)]  # once per decoder pass, in order, ending at total
    assert torch.equal(got, ours.decode(z))
    calls.clear()
    assert torch.equal(ours.decode_latents(z, progress=lambda *a: calls.append(a)), ours.decode_latents(z))
    assert calls[-1] == (passes, passes)


# --- checkpoints -----------------------------------------------------------------------------------------------------


def test_both_layouts_load_strictly_and_diffusers_reads_ours(ours, tmp_path):
    z = _randn(1, 16, 2, 4, 4, seed=12)
    want = ours.disable_tiling().decode(z)
    official = save_vae_official(ours, TINY, tmp_path / "official" / "vae")
    diffusers_dir = save_vae_diffusers(ours, TINY, tmp_path / "diffusers" / "vae")
    assert json.loads((official / "config.json").read_text())["time_compression_ratio"] == 4
    for d in (official, diffusers_dir):
        model = load_vae(d)
        assert model.config == TINY
        assert torch.equal(model.disable_tiling().decode(z), want)
    theirs = AutoencoderKLHunyuanVideo.from_pretrained(diffusers_dir)
    assert torch.equal(theirs.state_dict()["decoder.conv_out.conv.weight"], ours.decoder.conv_out.conv.weight)
    assert load_vae(official, dtype=torch.bfloat16).decoder.conv_in.conv.weight.dtype == torch.bfloat16


def _official_dir(tmp_path: Path, payload: object) -> Path:
    d = tmp_path / "vae"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(TINY.to_official()))
    torch.save(payload, d / "pytorch_model.pt")
    return d


def test_official_nesting_and_prefix_are_accepted(ours, tmp_path):
    sd = ours.state_dict()
    for payload in (
        {"state_dict": sd},
        {f"vae.{k}": v for k, v in sd.items()},
        {"state_dict": {f"vae.{k}": v for k, v in sd.items()}},
    ):
        model = load_vae(_official_dir(tmp_path, payload))
        assert torch.equal(model.quant_conv.weight, ours.quant_conv.weight)


def test_loading_errors_are_clear(ours, tmp_path):
    sd = dict(ours.state_dict())
    missing = {k: v for k, v in sd.items() if k != "decoder.conv_out.conv.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys 1: decoder\.conv_out\.conv\.bias"):
        load_vae(_official_dir(tmp_path, missing))
    wrong = {**sd, "quant_conv.weight": torch.zeros(32, 32, 1, 1, 2)}
    with pytest.raises(CheckpointError, match=r"quant_conv\.weight \(checkpoint \(32, 32, 1, 1, 2\)"):
        load_vae(_official_dir(tmp_path, wrong))
    with pytest.raises(CheckpointError, match=r"unexpected keys 1: extra"):
        load_vae(_official_dir(tmp_path, {**sd, "extra": torch.zeros(1)}))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(CheckpointError, match="refused"):
        load_vae(_official_dir(tmp_path, {"state_dict": sd, "x": Payload()}))
    assert not marker.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(TINY.to_diffusers()))
    with pytest.raises(CheckpointError, match=r"no pytorch_model\.pt"):
        load_vae(empty)
    (empty / "config.json").write_text(json.dumps({**TINY.to_diffusers(), "norm_num_groups": 3}))
    with pytest.raises(CheckpointError, match="not a usable VAE config"):
        load_vae(empty)


def test_random_vae_is_deterministic_and_non_trivial():
    a, b = random_vae(TINY, seed=1), random_vae(TINY, seed=1)
    c = random_vae(TINY, seed=2)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.encoder.conv_in.conv.weight, c.encoder.conv_in.conv.weight)
    gn = a.decoder.mid_block.attentions[0].group_norm
    assert not torch.allclose(gn.weight, torch.ones_like(gn.weight)) and gn.bias.abs().sum() > 0


# --- decode speed and memory formulations -------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 2)])
def test_sub_pixel_upsampler_equals_upsample_then_conv(factor):
    """The phase kernels on the low-resolution input against the literal nearest upsampling + causal conv, for a clip
    (state None) and for three streamed chunks (first chunk, then two carrying the cached frames)."""
    torch.manual_seed(0)
    up = vae_mod.Upsample(8, factor)
    x = _randn(1, 8, 5, 6, 7, seed=16)
    outs = {}
    for phases in (True, False):
        up.phases = phases
        state: dict = {}
        streamed = torch.cat([up(x[:, :, :2], state), up(x[:, :, 2:3], state), up(x[:, :, 3:], state)], 2)
        outs[phases] = (up(x), streamed)
    up.phases = True
    n = factor[0] * 5 - (factor[0] == 2)
    assert outs[True][0].shape == (1, 8, n, 12, 14)
    assert (outs[True][0] - outs[False][0]).abs().max() <= 1e-5
    assert (outs[True][1] - outs[False][1]).abs().max() <= 1e-5
    assert (outs[True][1] - outs[True][0]).abs().max() <= 1e-5  # streaming is exact for a lone upsampler


def test_decoder_with_literal_upsamplers_gives_the_same_video(ours, monkeypatch):
    z = _randn(1, 16, 4, 3, 4, seed=17)
    ours.tiling = TilingConfig(mode="chunked", chunk_latents=1)
    want = ours.decode(z)
    monkeypatch.setattr(vae_mod.Upsample, "phases", False)
    assert (ours.decode(z) - want).abs().max() <= TOL


@pytest.mark.parametrize("shape", [(1, 8, 3, 5, 6), (2, 4, 4, 9, 3)])
def test_forced_onednn_conv_equals_torch_conv(shape):
    x, w, b = _randn(*shape, seed=18), _randn(6, shape[1], 3, 3, 3, seed=19), _randn(6, seed=20)
    for stride in (1, (1, 2, 2), (2, 2, 2)):
        want = torch.nn.functional.conv3d(x, w, b, stride)
        assert (vae_mod.conv3d(x, w, b, stride) - want).abs().max() <= TOL  # outputs ~30: float32 rounding


def test_group_norm_statistics_match_torch_in_blocks_of_groups(monkeypatch):
    norm = torch.nn.GroupNorm(4, 16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = _randn(2, 16, 3, 5, 4, seed=21) * 3 + 50  # a large mean: float32 E[x^2] - mean^2 would lose digits
    want = torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, 1e-6)
    monkeypatch.setattr(vae_mod, "SLICE_BYTES", 1)  # one group per torch call
    for _ in range(2):
        with torch.no_grad():
            assert (vae_mod.group_norm(norm, x) - want).abs().max() <= 1e-4
        monkeypatch.undo()


def _peak_live_bytes(fn) -> int:
    """Peak bytes of tensor storages alive at once while fn runs (counted at every op output)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    live: dict[int, int] = {}
    peak = [0]

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in live:
                    st = t.untyped_storage()
                    live[st.data_ptr()] = st.nbytes()
                    weakref.finalize(st, live.pop, st.data_ptr(), None)
            peak[0] = max(peak[0], sum(live.values()))
            return out

    with Track():
        fn()
    return peak[0]


def test_chunked_decode_working_set_does_not_grow_with_the_clip(ours):
    """Peak live tensor bytes of a chunked decode: 3x the latents adds the longer output and the attention keys, not
    another set of activations."""
    ours.tiling = TilingConfig(mode="chunked", chunk_latents=1)
    short, long = _randn(1, 16, 3, 8, 8, seed=22), _randn(1, 16, 9, 8, 8, seed=22)
    peak_short = _peak_live_bytes(lambda: ours.decode(short))
    peak_long = _peak_live_bytes(lambda: ours.decode(long))
    video_growth = 3 * 4 * (9 - 3) * 64 * 64 * 4  # (B, 3, frames, 64, 64) float32
    kv_growth = 2 * 6 * 8 * 8 * TINY.block_out_channels[-1] * 4  # cached keys and values of 6 more latents
    assert peak_long - peak_short <= 1.5 * (video_growth + kv_growth)
