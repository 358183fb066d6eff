"""Stain normalisation (Reinhard): colour space, per-section statistics, and the option through fit/predict."""

import numpy as np
import pytest

import sthist
from sthist._core._stain import StainStats, lab_to_rgb, normalise, rgb_to_lab, stain_stats


def test_lab_round_trip_is_exact_on_uint8():
    rgb = np.random.default_rng(0).integers(1, 256, (64, 64, 3)).astype(np.uint8)
    np.testing.assert_array_equal(lab_to_rgb(rgb_to_lab(rgb)), rgb)


def test_normalised_section_takes_the_reference_statistics():
    rng = np.random.default_rng(1)
    tissue = np.stack(
        [rng.normal(170, 20, (80, 80)), rng.normal(90, 15, (80, 80)), rng.normal(160, 15, (80, 80))], -1
    )
    pale = np.clip(tissue * 0.6 + 90, 1, 255).astype(np.uint8)  # the same tissue, weaker stain
    strong = np.clip(tissue, 1, 255).astype(np.uint8)
    mask = np.ones((80, 80), dtype=bool)
    source, target = stain_stats(pale, mask), stain_stats(strong, mask)
    assert not np.allclose(source.mean, target.mean, atol=0.02)
    mapped = stain_stats(normalise(pale, source, target), mask)
    np.testing.assert_allclose(mapped.mean, target.mean, atol=0.01)
    np.testing.assert_allclose(mapped.std, target.std, rtol=0.1)
    # Identity when source and target agree.
    np.testing.assert_array_equal(normalise(strong, target, target), strong)


def test_stain_stats_refuse_sections_without_tissue():
    with pytest.raises(ValueError, match="stain statistics need tissue"):
        stain_stats(np.full((20, 20, 3), 240, np.uint8), np.zeros((20, 20), bool))
    with pytest.raises(ValueError, match="positive deviations"):
        StainStats.from_dict({"mean": [0, 0, 0], "std": [0.1, 0, 0.1]})


def test_stain_normalisation_through_fit_save_load_and_predict(tmp_path):
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=2)
    options = {"backbone": "tiny", "max_epochs": 1, "batch_size": 16, "k": 5, "views": 1}
    model = sthist.tl.fit({"toy0": sections["toy0"]}, stain_normalization=True, **options)
    record = model.config["stain"]
    assert record["method"] == "reinhard" and set(record["sections"]) == {"toy0"}
    # One training section: the reference is that section's own statistics.
    assert record["reference"] == record["sections"]["toy0"]
    assert model.setup_options()["stain_normalization"] is True
    loaded = sthist.models.load(model.save(tmp_path / "m"))
    assert loaded.stain_reference == model.stain_reference
    plain = sthist.tl.fit({"toy0": sections["toy0"]}, **options)
    assert plain.stain_reference is None and plain.config["stain"] is None
    first, _ = sthist.tl.predict(sections["toy1"], model, inplace=False)
    again, _ = sthist.tl.predict(sections["toy1"], loaded, inplace=False)
    np.testing.assert_allclose(first.to_numpy(), again.to_numpy(), rtol=1e-5)
    # The patches the encoder sees are normalised: a section's patch differs from the raw one.
    from sthist.data import SpotPatchDataset

    raw = SpotPatchDataset(sections["toy1"], patch_size_um=112, patch_size_px=32)
    mapped = SpotPatchDataset(
        sections["toy1"], patch_size_um=112, patch_size_px=32, stain_reference=model.stain_reference
    )
    assert not np.array_equal(raw.patch(0), mapped.patch(0))
