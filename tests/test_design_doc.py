"""docs/DESIGN.md is the repository's own record of the facts the code relies on: every citation of it in the code,
tests, benchmarks and docs names the file by its repository path and points at a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

from hyvideo.checkpoints.dit import build_dit
from hyvideo.config import DIT_PRESETS
from hyvideo.modules.dit import REFINER_MLP_RATIO
from hyvideo.modules.text_encoders import OFFICIAL_CROP_START
from hyvideo.modules.vae import TilingConfig, VAEConfig, build_vae
from hyvideo.quantization import fp8_layer_names
from hyvideo.sampling import flow_sigmas, latent_shape

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# a citation: "DESIGN" (optionally ".md", optionally after "docs/") followed by "§" and a section number
CITATION = re.compile(r"(docs/)?" + "DESIGN" + r"(\.md)? §(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)  # "## 2. Title", "### 2.1 Title"


def sources() -> list[Path]:
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")]
    for folder in ("hyvideo", "tests", "benchmarks", "scripts"):
        files += (ROOT / folder).rglob("*.py")
    return sorted(p for p in files if p.is_file() and p != DESIGN)


def citations() -> list[tuple[str, re.Match]]:
    found = []
    for path in sources():
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [(f"{path.relative_to(ROOT)}:{line_no}", m) for m in CITATION.finditer(line)]
    return found


def test_sections_are_numbered_in_order():
    numbers = HEADING.findall(DESIGN.read_text())
    top = [int(n) for n in numbers if "." not in n]
    assert top == list(range(1, len(top) + 1)), top
    for n in numbers:  # every subsection sits under its own section, numbered from 1
        if "." in n:
            major, minor = n.split(".")
            assert major in numbers, n
            assert minor == "1" or f"{major}.{int(minor) - 1}" in numbers, n


def test_every_citation_names_the_file_and_an_existing_section():
    sections = set(HEADING.findall(DESIGN.read_text()))
    found = citations()
    assert len(found) >= 10, len(found)  # the scan does find them (22 places when this test was written)
    for where, m in found:
        assert m.group(1) and m.group(2), f"{where}: cite it as docs/DESIGN.md §N, got {m.group(0)!r}"
        assert m.group(3) in sections, f"{where}: docs/DESIGN.md has no section {m.group(3)}"


def test_figures_stated_in_the_notes_are_the_code_s():
    """Numbers docs/DESIGN.md states, recomputed from the code (meta-device builds: no memory)."""
    text = " ".join(DESIGN.read_text().split())  # line breaks as spaces

    def stated(figure: str) -> None:
        assert figure in text, f"docs/DESIGN.md no longer states {figure!r}"

    for preset, params, tensors in (
        ("HYVideo-T/2-cfgdistill", 12_821_012_544, 856),
        ("HYVideo-T/2", 12_810_782_784, 852),
    ):
        sd = build_dit(DIT_PRESETS[preset]).state_dict()
        assert (sum(v.numel() for v in sd.values()), len(sd)) == (params, tensors)
        stated(f"{params:,}")
        stated(f"{tensors} tensors")
    model = build_dit(DIT_PRESETS["HYVideo-T/2-cfgdistill"])
    fp8 = fp8_layer_names(model)
    assert (len(fp8), sum(model.get_submodule(n).weight.numel() for n in fp8)) == (320, 12_457_082_880)
    stated("320 layers holding 12,457,082,880")
    assert len(build_vae(VAEConfig()).state_dict()) == 248
    stated("248 tensors")
    assert [round(float(s), 4) for s in flow_sigmas(4, 7.0)] == [1.0, 0.9545, 0.875, 0.7, 0.0]
    stated("1, 0.9545, 0.875, 0.7, 0")
    assert latent_shape(1, 129, 720, 1280) == (1, 16, 33, 90, 160) and 33 * 45 * 80 == 118_800
    assert latent_shape(1, 129, 544, 960)[2:] == (33, 68, 120) and 33 * 34 * 60 == 67_320
    stated("33 · 45 · 80 = 118,800")
    stated("33 · 34 · 60 = 67,320")
    assert OFFICIAL_CROP_START == {"dit-llm-encode": 36, "dit-llm-encode-video": 95}
    stated("95 for the video template and 36 for the image template")
    tiles = TilingConfig.official(VAEConfig())
    assert (tiles.tile_size, tiles.tile_stride, tiles.tile_frames, tiles.tile_stride_frames) == (256, 192, 64, 48)
    stated("Spatial tiles of 256 px (32 latents) every 192 px (24 latents)")
    stated("Temporal tiles of 64 frames (16 latents;")
    assert VAEConfig().scaling_factor == 0.476986
    stated("z · 0.476986")
    assert REFINER_MLP_RATIO == 4.0
