"""A section is resolved once per call and passed down; the layers import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from _shared import tiny_fit

import sthist
from sthist._core import _section


@pytest.fixture
def counted(monkeypatch):
    """Count element resolutions and pyramid reads."""
    calls = {"elements": 0, "levels": 0}
    resolve, levels = _section.resolve_elements, _section.image_levels

    def counting_resolve(*args, **kwargs):
        calls["elements"] += 1
        return resolve(*args, **kwargs)

    def counting_levels(*args, **kwargs):
        calls["levels"] += 1
        return levels(*args, **kwargs)

    monkeypatch.setattr(_section, "resolve_elements", counting_resolve)
    monkeypatch.setattr(_section, "image_levels", counting_levels)
    return calls


def test_each_call_resolves_each_section_once(counted):
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2)
    sthist.pp.qc_spots(sections["toy0"], patch_size_um=64)
    assert counted == {"elements": 1, "levels": 1}
    model = sthist.tl.fit(sections, **tiny_fit())
    assert counted == {"elements": 3, "levels": 3}  # one more for each of the two training sections
    sthist.tl.predict(sections["toy1"], model)
    assert counted == {"elements": 4, "levels": 4}
    sthist.tl.predict_tiles(sections["toy1"], model, stride_um=128)
    assert counted["levels"] == 5  # the tiles reuse the image resolved for the tissue mask


def test_patch_size_reaches_the_reader_through_the_section():
    sdata = sthist.datasets.toy(1)["toy0"]
    section = _section.Section.resolve(sdata)
    dataset = sthist.data.SpotPatchDataset(section, patch_size_um=96, patch_size_px=48)
    geometry = dataset.geometry(section.name)
    assert geometry.patch_size_um == 96 and dataset.patch(0).shape == (48, 48, 3)
    crop_um = [
        size * mpp for size, mpp in zip(geometry.crop_size, geometry.level_microns_per_pixel, strict=True)
    ]
    assert crop_um == pytest.approx([96, 96])


LAYERS = {
    "_core": 0,
    "pp": 1,
    "data": 2,
    "datasets": 2,
    "models": 3,
    "tl": 4,
    "io": 4,
    "pl": 5,
    "cli": 6,
    "__main__": 6,
}
#: The command line may read private helpers of the layers below it.
ENTRY_POINTS = ("cli", "__main__")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sthist"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("sthist")}
    return names


def test_layers_import_only_downwards_and_only_public_names_across_layers():
    package = Path(sthist.__file__).parent
    problems = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        layer = relative.parts[0].removesuffix(".py")
        if layer not in LAYERS:
            continue
        for module in _imports(path):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else None
            if target not in LAYERS or target == layer:
                continue
            if LAYERS[target] > LAYERS[layer]:
                problems.append(f"{relative} imports {module} from a higher layer")
            elif (
                target != "_core"
                and len(parts) > 2
                and parts[2].startswith("_")
                and layer not in ENTRY_POINTS
            ):
                problems.append(f"{relative} imports private {module}")
    assert problems == []
