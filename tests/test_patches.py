"""Patch geometry and the spot patch dataset: centring, physical size, pyramid levels, lazy reads, errors."""

import numpy as np
import pytest
import torch

import sthist
from sthist.data import SpotPatchDataset, dihedral

from .conftest import marked_section


def _red_fraction(patch):
    return ((patch[..., 0] > 200) & (patch[..., 1] < 60)).mean()


@pytest.mark.parametrize("microns_per_pixel", [0.5, 1.0, 2.0])
def test_patches_centred_and_of_physical_size(microns_per_pixel):
    # A 56 µm red square centred on each spot: a 112 µm patch must show it centred, covering a quarter.
    centres = np.array([[150.3, 170.8], [260.6, 220.2]]) / microns_per_pixel
    sdata = marked_section(
        microns_per_pixel=microns_per_pixel, size_px=int(500 / microns_per_pixel), centres_px=centres
    )
    dataset = SpotPatchDataset(sdata, patch_size_um=112, patch_size_px=64)
    for index in range(len(dataset)):
        patch = dataset.patch(index)
        assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
        assert _red_fraction(patch) == pytest.approx(0.25, abs=0.04)
        red = (patch[..., 0] > 200) & (patch[..., 1] < 60)
        rows, cols = np.nonzero(red)
        # The square's centre is the patch centre (31.5 in pixel-centre coordinates) within a pixel.
        assert rows.mean() == pytest.approx(31.5, abs=1.0)
        assert cols.mean() == pytest.approx(31.5, abs=1.0)
        assert red[16:48, 16:48].mean() > 0.9 and not red[:8].any() and not red[:, :8].any()


def test_same_physical_area_across_scales_and_downsampled_images():
    # Same tissue at 0.5 µm/px and at a 4x downsampled image placed by a scale transformation.
    centres = np.array([[300.0, 340.0], [520.0, 440.0]])
    fine = marked_section(microns_per_pixel=0.5, size_px=1000, centres_px=centres)
    coarse = marked_section(microns_per_pixel=0.5, size_px=1000, centres_px=centres, image_scale=4.0)
    fine_patches = SpotPatchDataset(fine, patch_size_um=112, patch_size_px=56)
    coarse_patches = SpotPatchDataset(coarse, patch_size_um=112, patch_size_px=56)
    assert coarse_patches.geometry("section0").level_microns_per_pixel == (2.0, 2.0)
    for index in range(2):
        a, b = fine_patches.patch(index), coarse_patches.patch(index)
        assert _red_fraction(a) == pytest.approx(_red_fraction(b), abs=0.05)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 25


def test_pyramid_level_choice(toy):
    sdata = toy["toy0"]  # 1 µm/px, levels at 1, 2, 4 µm/px
    assert sthist.pp.patch_geometry(sdata, patch_size_um=112, patch_size_px=224).level.index == 0
    assert sthist.pp.patch_geometry(sdata, patch_size_um=112, patch_size_px=56).level.index == 1
    assert sthist.pp.patch_geometry(sdata, patch_size_um=112, patch_size_px=28).level.index == 2
    geometry = sthist.pp.patch_geometry(sdata, patch_size_um=112, patch_size_px=28)
    assert geometry.crop_size == pytest.approx((28.0, 28.0), rel=0.01)
    with pytest.raises(ValueError, match="level must be between 0 and 2"):
        sthist.pp.patch_geometry(sdata, level=5)


def test_in_memory_and_lazy_paths_agree(toy):
    for sdata in toy.values():
        sthist.pp.normalize(sdata.tables["table"])
    genes = list(toy["toy0"].tables["table"].var_names[:4])
    eager = SpotPatchDataset(toy, genes=genes, patch_size_um=100, patch_size_px=48, in_memory=True)
    lazy = SpotPatchDataset(toy, genes=genes, patch_size_um=100, patch_size_px=48, in_memory=False)
    tiled = SpotPatchDataset(toy, genes=genes, patch_size_um=100, patch_size_px=48, in_memory=False)
    for section in tiled._sections:  # the squares-with-margin path of levels stored in large chunks
        section.reader._edges, section.reader.tile_size = None, 256
    assert len(eager) == len(lazy) == len(tiled) == 72
    for index in [0, 5, 40, 71, 3]:
        np.testing.assert_array_equal(eager.patch(index), lazy.patch(index))
        np.testing.assert_array_equal(eager.patch(index), tiled.patch(index))
    # The toy image is stored in 256 px chunks: a read across four of them is assembled from the cache.
    reader, pixels = lazy._sections[0].reader, eager._sections[0].reader.pixels
    assert reader.data.chunks[1][0] == 256
    np.testing.assert_array_equal(reader.read(200, 300, 250, 520), pixels[200:300, 250:520])
    np.testing.assert_array_equal(reader.read(0, 256, 0, 256), pixels[:256, :256])
    assert 0 < len(reader._tiles) <= reader.cached_chunks
    item = eager[40]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8
    assert item["expression"].shape == (4,) and item["expression"].dtype == torch.float32
    row = eager.spots.iloc[40]
    table = toy[row["section"]].tables["table"]
    np.testing.assert_allclose(
        item["expression"].numpy(), table[row["obs_name"], genes].layers["sthist_log1p"].toarray()[0]
    )


def test_levels_read_from_a_store_go_to_its_zarr_arrays(toy, tmp_path):
    # A section read back from a zarr store: its levels are plain views of zarr arrays, read directly (chunk by
    # chunk for patches, whole for the tissue mask), giving the same pixels as dask.
    import spatialdata as sd

    from sthist._core._image import level_pixels, zarr_source
    from sthist._core._section import Section

    toy["toy0"].write(tmp_path / "toy0.zarr")
    stored = sd.read_zarr(tmp_path / "toy0.zarr")
    level = Section.resolve(stored).levels[0]
    source = zarr_source(level.data.data)
    assert source is not None and tuple(source.shape) == tuple(level.data.shape)
    expected = np.asarray(level.data.data.compute()).transpose(1, 2, 0)
    np.testing.assert_array_equal(level_pixels(level), expected)
    # Anything computed on top of the read is not a plain view: it goes through dask.
    data = level.data.data
    for derived in (data[:, 1:], data.rechunk((3, 128, 128)), data.astype("float32"), data + 0):
        assert zarr_source(derived) is None
    assert zarr_source(toy["toy0"].images["he"]["scale0"]["image"].data) is None  # in memory, not zarr
    for name, sdata in (("stored", stored), ("memory", toy["toy0"])):
        lazy = SpotPatchDataset(sdata, patch_size_um=100, patch_size_px=48, in_memory=False)
        eager = SpotPatchDataset(sdata, patch_size_um=100, patch_size_px=48, in_memory=True)
        reader = lazy._sections[0].reader
        assert (reader._store is not None) == (name == "stored")
        pixels = eager._sections[0].reader.pixels  # the dataset's level (not necessarily level 0)
        np.testing.assert_array_equal(reader.read(100, 200, 50, 300), pixels[100:200, 50:300])
        for index in [0, 7, 35]:
            np.testing.assert_array_equal(lazy.patch(index), eager.patch(index))
        reader._edges, reader.tile_size = None, 128  # the squares-with-margin path reads the same way
        reader._tiles.clear()
        for index in [0, 7, 35]:
            np.testing.assert_array_equal(lazy.patch(index), eager.patch(index))
        np.testing.assert_array_equal(reader.read(0, 300, 0, 300), pixels[:300, :300])  # wider than a square


def test_dataloader_batches_and_augmentation(toy):
    sthist.pp.normalize(toy["toy0"].tables["table"])
    dataset = SpotPatchDataset(
        toy["toy0"], genes=["gene000"], patch_size_um=100, patch_size_px=32, augment=True
    )
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["expression"].shape == (8, 1)
    plain = dataset.patch(0)
    views = {dihedral(plain, t).tobytes() for t in range(8)}
    torch.manual_seed(1)
    seen = {dataset[0]["image"].permute(1, 2, 0).numpy().tobytes() for _ in range(40)}
    assert seen <= views and len(seen) > 3


def test_dihedral_group():
    patch = np.arange(2 * 3 * 3).reshape(3, 3, 2)
    outputs = [dihedral(patch, t) for t in range(8)]
    assert len({o.tobytes() for o in outputs}) == 8
    with pytest.raises(ValueError):
        dihedral(patch, 8)


def test_spots_outside_image_are_refused_or_filtered():
    sdata = marked_section(centres_px=[[150.0, 170.0], [20.0, 200.0]])
    with pytest.raises(ValueError, match=r"patches of 1 spots leave the image .*qc_spots"):
        SpotPatchDataset(sdata, patch_size_um=112, patch_size_px=32)
    sthist.pp.qc_spots(sdata, patch_size_um=112, patch_size_px=32, min_tissue_fraction=0.0)
    assert sdata.tables["table"].obs["sthist_in_image"].tolist() == [True, False]
    dataset = SpotPatchDataset(sdata, patch_size_um=112, patch_size_px=32, qc_column="sthist_pass_qc")
    assert len(dataset) == 1 and dataset.spots["obs_name"].tolist() == ["s0"]


def test_dataset_input_errors(toy):
    sdata = toy["toy0"]
    with pytest.raises(KeyError, match=r"no layer 'sthist_log1p' \(run `sthist.pp.normalize"):
        SpotPatchDataset(sdata, genes=["gene000"])
    sthist.pp.normalize(sdata.tables["table"])
    with pytest.raises(KeyError, match=r"lacks 1 of the requested genes: \['MISSING'\]"):
        SpotPatchDataset(sdata, genes=["gene000", "MISSING"])
    with pytest.raises(KeyError, match="no obs column 'sthist_pass_qc'.*qc_spots"):
        SpotPatchDataset(sdata, qc_column="sthist_pass_qc")
    sdata.tables["table"].obs["none"] = False
    with pytest.raises(ValueError, match="has no spot to use"):
        SpotPatchDataset(sdata, qc_column="none")
    with pytest.raises(ValueError, match="patch_size_um must be a positive"):
        SpotPatchDataset(sdata, patch_size_um=-1)
    with pytest.raises(TypeError, match="Expected a SpatialData"):
        SpotPatchDataset("toy0")


def test_dataset_leaves_sdata_unchanged(toy):
    sdata = toy["toy1"]
    before_obs = sdata.tables["table"].obs.copy()
    radius = sdata.shapes["spots"]["radius"].copy()
    SpotPatchDataset(sdata, patch_size_um=100, patch_size_px=32)
    assert sdata.tables["table"].obs.equals(before_obs)
    assert sdata.shapes["spots"]["radius"].equals(radius)


def test_encoding_reads_each_patch_once_for_all_views(monkeypatch):
    """Views are dihedral transforms of one read patch: the same tokens as reading each view afresh."""
    import torch

    import sthist
    from sthist.data import SpotPatchDataset, encode_patches
    from sthist.models._backbones import create_encoder

    sdata = sthist.datasets.toy(1, grid=4, n_genes=4, random_state=0)["toy0"]
    dataset = SpotPatchDataset(sdata, patch_size_um=112, patch_size_px=32)
    encoder = create_encoder("tiny", pretrained=False).eval()
    with torch.inference_mode():
        expected = torch.stack(
            [
                torch.stack(
                    [
                        encoder(torch.from_numpy(dataset.patch(i, v)).permute(2, 0, 1)[None])[0]
                        for v in range(4)
                    ]
                )
                for i in range(len(dataset))
            ]
        )
    reads = []
    original = SpotPatchDataset.patch
    monkeypatch.setattr(
        SpotPatchDataset, "patch", lambda self, i, t=0: reads.append(i) or original(self, i, t)
    )
    tokens = encode_patches(dataset, encoder, views=4, batch_size=6, dtype=torch.float32)
    assert len(reads) == len(dataset)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-5)


def test_resampling_weights_give_pils_pixels():
    # The device path's separable weights are PIL's bilinear filter (antialiased when shrinking), given a box
    # with sub-pixel edges inside a padded crop: the same pixels up to PIL's 8-bit rounding between its passes.
    from PIL import Image

    from sthist.data._patches import resample, resampling_weights

    rng = np.random.default_rng(0)
    for trial in range(30):
        height, width = (int(v) for v in rng.integers(30, 160, 2))
        size = int(rng.integers(16, 100))  # enlarging and shrinking (up to about 10×)
        crop = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if trial % 2:  # smooth images as well as noise
            small = Image.fromarray(crop).resize((width // 4 + 1, height // 4 + 1))
            crop = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
        box = (
            rng.uniform(0, 2),
            rng.uniform(0, 2),
            rng.uniform(width - 2, width),
            rng.uniform(height - 2, height),
        )
        expected = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR, box=box))
        bounds = torch.tensor([box[1]]), torch.tensor([box[3]]), torch.tensor([height])
        rows = resampling_weights(*bounds, size, height + 5)[0].numpy()
        assert rows.shape == (size, height + 5) and not rows[:, height:].any()
        np.testing.assert_allclose(rows.sum(axis=1), 1, rtol=1e-5)
        padded = np.full((1, 3, height + 5, width + 3), 255, dtype=np.uint8)  # padding must not count
        padded[0, :, :height, :width] = crop.transpose(2, 0, 1)
        boxes = torch.tensor([[*box, height, width]], dtype=torch.float64)
        pixels = resample(torch.from_numpy(padded), boxes, size)
        difference = np.abs(pixels[0].permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
        assert difference.max() <= 1, trial


def test_resampling_on_the_device_matches_the_cpu_path(toy):
    from sthist.data import encode_patches
    from sthist.data._features import _DeviceResampledBatches
    from sthist.models._backbones import create_encoder

    dataset = SpotPatchDataset(toy, patch_size_um=100, patch_size_px=40)  # shrinks a level-0 crop
    items = list(range(0, len(dataset), 5))
    batches = _DeviceResampledBatches(dataset, items, 8, torch.device("cpu"))
    jobs = [(row, index, view) for row, index in enumerate(items) for view in range(8)]
    for start in range(0, len(jobs), 8):
        chunk = jobs[start : start + 8]
        batches.fill(0, chunk)
        patches = batches.batch(0, chunk)
        for slot, (_, index, view) in enumerate(chunk):  # every dihedral view, turned on the device
            expected = torch.from_numpy(dataset.view(index, view)).permute(2, 0, 1)
            assert (patches[slot].int() - expected.int()).abs().max() <= 1
    encoder = create_encoder("tiny", pretrained=False)
    cpu = encode_patches(dataset, encoder, views=4, batch_size=6, dtype=torch.float32, indices=items)
    device = encode_patches(
        dataset, encoder, views=4, batch_size=6, dtype=torch.float32, indices=items, resample_on_device=True
    )
    torch.testing.assert_close(device, cpu, rtol=0, atol=0.02 * float(cpu.abs().max()))
    # Stain jitter works on resampled pixels on the CPU: asking for the device path with it is an error.
    with pytest.raises(
        ValueError, match="resample_on_device=True cannot apply stain normalisation or jitter"
    ):
        encode_patches(dataset, encoder, views=2, jitter=0.05, indices=items, resample_on_device=True)
