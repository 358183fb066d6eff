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
    options = {"backbone": "tiny", "max_epochs": 1, "batch_size": 16, "k": 5, "training": {"views": 1},
               "architecture": {"context_um": None}}  # fmt: skip
    model = sthist.tl.fit({"toy0": sections["toy0"]}, data={"stain_normalization": True}, **options)
    record = model.config.stain
    assert record["method"] == "reinhard" and set(record["sections"]) == {"toy0"}
    # One training section: the reference is that section's own statistics.
    assert record["reference"] == record["sections"]["toy0"]
    assert model.setup_options()["data"].stain_normalization is True
    loaded = sthist.models.load(model.save(tmp_path / "m"))
    assert loaded.stain_reference == model.stain_reference
    plain = sthist.tl.fit({"toy0": sections["toy0"]}, **options)
    assert plain.stain_reference is None and plain.config.stain is None
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


class _Midpoint:
    """A generator stand-in drawing the middle of every interval: α = 1, β = 0."""

    def uniform(self, low, high, size):
        return np.full(size, (low + high) / 2)


def test_hed_jitter_recomposes_exactly_and_moves_each_stain():
    from sthist._core._stain import _OD_TO_HED, hed_jitter

    rgb = np.random.default_rng(0).integers(1, 256, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(hed_jitter(rgb, 0.05, _Midpoint()), rgb)  # deconvolution round trip
    assert hed_jitter(rgb, 0.0, np.random.default_rng(0)) is rgb
    first = hed_jitter(rgb, 0.05, np.random.default_rng(3))
    np.testing.assert_array_equal(first, hed_jitter(rgb, 0.05, np.random.default_rng(3)))  # seeded
    assert first.dtype == np.uint8 and first.shape == rgb.shape
    change = np.abs(first.astype(int) - rgb).mean()
    stronger = np.abs(hed_jitter(rgb, 0.3, np.random.default_rng(3)).astype(int) - rgb).mean()
    assert 0.5 < change < stronger

    # Scaling haematoxylin alone changes the haematoxylin channel of the deconvolution, not eosin.
    class HaematoxylinOnly:
        calls = 0

        def uniform(self, low, high, size):
            self.calls += 1
            values = np.full(size, (low + high) / 2)
            if self.calls == 1:  # α
                values[0] = high
            return values

    tissue = np.stack([np.full((8, 8), 150), np.full((8, 8), 80), np.full((8, 8), 160)], -1).astype(np.uint8)
    moved = hed_jitter(tissue, 0.3, HaematoxylinOnly())

    def concentrations(image):
        return (-np.log10(np.maximum(image.astype(float), 1) / 255) @ _OD_TO_HED).mean(axis=(0, 1))

    before, after = concentrations(tissue), concentrations(moved)
    assert after[0] == pytest.approx(before[0] * 1.3, rel=0.03)
    assert after[1] == pytest.approx(before[1], abs=0.01)


def test_hed_jitter_setting_is_checked():
    from sthist.models import TrainingConfig

    for bad in (-0.1, 1.0, True, "0.05"):
        with pytest.raises(ValueError, match="hed_jitter must be a number"):
            TrainingConfig(hed_jitter=bad)
    with pytest.raises(ValueError, match="needs views >= 2"):
        TrainingConfig(hed_jitter=0.05, views=1)
    assert TrainingConfig(hed_jitter=0.05, views=1, fine_tune=True).hed_jitter == 0.05
    assert TrainingConfig.from_dict({"max_epochs": 3}).hed_jitter == 0.0  # models saved before the option


def test_jittered_views_are_cached_apart_and_stable_across_datasets():
    from sthist.data import SpotPatchDataset, TokenCache, tokens_of
    from sthist.models._backbones import create_encoder

    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=5, n_genes=6, random_state=1)
    encoder = create_encoder("tiny", pretrained=False)
    both = SpotPatchDataset(sections, patch_size_um=64, patch_size_px=32)
    one = SpotPatchDataset({"toy1": sections["toy1"]}, patch_size_um=64, patch_size_px=32)
    # A view's jitter is seeded by the spot's table row and the view, not by its position in a dataset.
    index = len(both) - 1
    np.testing.assert_array_equal(both.view(index, 2, 0.05), one.view(len(one) - 1, 2, 0.05))
    np.testing.assert_array_equal(both.view(index, 0, 0.05), both.patch(index))  # view 0 as scanned
    assert not np.array_equal(both.view(index, 2, 0.05), both.view(index, 2, 0.0))
    cache = TokenCache()
    plain = tokens_of(both, encoder, identity="tiny", views=3, token_cache=cache)
    jittered = tokens_of(both, encoder, identity="tiny", views=3, token_cache=cache, jitter=0.05)
    assert len(cache) == 4  # two sections, with and without jitter
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(plain[:, 0], jittered[:, 0])
    assert not torch.equal(plain[:, 1:], jittered[:, 1:])
    direct = tokens_of(both, encoder, identity="tiny", views=3, jitter=0.05)
    torch.testing.assert_close(direct, jittered)


def test_hed_jitter_through_fit_and_fine_tuning():
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=2)
    options = {
        "backbone": "tiny",
        "max_epochs": 1,
        "batch_size": 16,
        "k": 5,
        "architecture": {"context_um": None},
    }
    model = sthist.tl.fit(sections, training={"hed_jitter": 0.05, "views": 2}, random_state=0, **options)
    assert model.config.training.hed_jitter == 0.05
    plain = sthist.tl.fit(sections, training={"views": 2}, random_state=0, **options)
    assert plain.config.training.hed_jitter == 0.0
    assert not np.allclose(model.tensors["bank.embeddings"].numpy(), plain.tensors["bank.embeddings"].numpy())
    # Fine-tuning jitters each patch it reads, then leaves the dataset as it was.
    from sthist.data import SpotPatchDataset

    dataset = SpotPatchDataset(sections, patch_size_um=64, patch_size_px=32, augment=True, hed_jitter=0.2)
    import torch

    torch.manual_seed(0)
    draws = [dataset[0]["image"] for _ in range(4)]
    assert len({tuple(d.float().mean(dim=(1, 2)).round(decimals=3).tolist()) for d in draws}) == 4
    tuned = sthist.tl.fit(
        sections, training={"hed_jitter": 0.05, "fine_tune": True, "views": 1}, accelerator="cpu", **options
    )
    assert tuned.config.training.hed_jitter == 0.05
    assert tuned._dataset.hed_jitter == 0.0 and tuned._dataset.augment is False
