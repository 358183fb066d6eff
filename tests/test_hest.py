"""HEST-1k's sample layout read into SpatialData (small files written here in that exact layout)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sthist

SAMPLE = "TENXTEST"


def _write_sample(root, sample=SAMPLE, *, microns_per_pixel=0.5, patient="P1"):
    import tifffile

    rng = np.random.default_rng(0)
    height, width = 1600, 2000
    image = np.full((height, width, 3), 235, dtype=np.uint8)
    image[300:1300, 400:1700] = (rng.random((1000, 1300, 3)) * 120 + 60).astype(np.uint8)  # tissue
    (root / "wsis").mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(root / "wsis" / f"{sample}.tif", bigtiff=True) as tif:
        options = {"tile": (256, 256), "photometric": "rgb"}
        tif.write(image, subifds=2, **options)
        tif.write(image[::2, ::2], subfiletype=1, **options)
        tif.write(image[::4, ::4], subfiletype=1, **options)
    ys, xs = np.meshgrid(np.arange(500, 1200, 200.0), np.arange(600, 1600, 200.0), indexing="ij")
    xy = np.c_[xs.ravel(), ys.ravel()]
    counts = rng.poisson(5, size=(len(xy), 6)).astype(np.float32)
    adata = ad.AnnData(
        counts,
        obs=pd.DataFrame(
            {"in_tissue": 1, "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]},
            index=[f"AAAC-{i}" for i in range(len(xy))],
        ),
        var=pd.DataFrame(index=["ERBB2", "KRT19", "MT-CO1", "ACTB", "GAPDH", "CD74"]),
    )
    adata.obsm["spatial"] = xy
    (root / "st").mkdir(exist_ok=True)
    adata.write_h5ad(root / "st" / f"{sample}.h5ad")
    (root / "metadata").mkdir(exist_ok=True)
    metadata = {
        "pixel_size_um_estimated": microns_per_pixel, "pixel_size_um_embedded": 0.2738, "spot_diameter": 55.0,
        "inter_spot_dist": 100.0, "st_technology": "Visium", "species": "Homo sapiens", "organ": "Breast",
        "patient": patient, "id": sample,
    }  # fmt: skip
    (root / "metadata" / f"{sample}.json").write_text(json.dumps(metadata))
    (root / "patches").mkdir(exist_ok=True)
    (root / "patches" / f"{sample}.h5").write_bytes(b"")
    return adata


def test_a_hest_sample_reads_lazily_with_its_scale_and_pyramid(tmp_path):
    adata = _write_sample(tmp_path)
    sections = sthist.datasets.hest(tmp_path, SAMPLE)
    sdata = sections[SAMPLE]
    assert sthist.pp.get_microns_per_pixel(sdata) == 0.5  # pixel_size_um_estimated, not the embedded value
    levels = [sdata.images["he"][f"scale{i}"]["image"] for i in range(3)]
    assert [level.shape for level in levels] == [(3, 1600, 2000), (3, 800, 1000), (3, 400, 500)]
    assert all(hasattr(level.data, "dask") for level in levels)  # the slide's own levels, read lazily
    table = sdata.tables["table"]
    assert list(table.obs_names) == list(adata.obs_names) and table.n_vars == 6
    np.testing.assert_array_equal(table.X.toarray(), adata.X)
    radius = sdata.shapes["spots"]["radius"].to_numpy()
    np.testing.assert_allclose(radius, 55.0 / 2 / 0.5)  # spot_diameter in µm
    attrs = sdata.attrs["sthist"]
    assert attrs["section"] == SAMPLE and attrs["patient"] == "P1"
    assert attrs["hest"]["st_technology"] == "Visium" and attrs["hest"]["files"] == [f"patches/{SAMPLE}.h5"]
    # The section goes through sthist: QC on the coarse level, patches at the model's resolution.
    sthist.pp.qc_spots(sdata)
    assert table.obs["sthist_pass_qc"].all()
    dataset = sthist.data.SpotPatchDataset(sdata, patch_size_um=112, patch_size_px=224)
    patch = dataset.patch(0)
    assert patch.shape == (224, 224, 3) and patch.std() > 10  # tissue, read from level 0 (0.5 µm/px)


def test_hest_names_missing_files_and_downloads_only_when_asked(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=rf"{SAMPLE}: st/{SAMPLE}.h5ad, wsis/{SAMPLE}.tif"):
        sthist.datasets.hest(tmp_path, [SAMPLE])
    calls = []

    def snapshot_download(**kwargs):  # what the hub would do: put the files in place
        calls.append(kwargs)
        _write_sample(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(sthist.settings, "offline", False)
    sections = sthist.datasets.hest(tmp_path, [SAMPLE], download=True)
    assert list(sections) == [SAMPLE]
    assert calls[0]["repo_id"] == "MahmoodLab/hest" and calls[0]["repo_type"] == "dataset"
    assert calls[0]["allow_patterns"] == [f"*{SAMPLE}[_.]**"] and calls[0]["local_dir"] == tmp_path
    sthist.datasets.hest(tmp_path, [SAMPLE], download=True)  # present: no second download
    assert len(calls) == 1
    monkeypatch.setattr(sthist.settings, "offline", True)
    with pytest.raises(RuntimeError, match="offline"):
        sthist.datasets.download_hest(tmp_path, ["OTHER"])


def test_hest_metadata_without_a_pixel_size_is_refused(tmp_path):
    _write_sample(tmp_path)
    path = tmp_path / "metadata" / f"{SAMPLE}.json"
    metadata = json.loads(path.read_text())
    del metadata["pixel_size_um_estimated"], metadata["pixel_size_um_embedded"]
    path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="gives no pixel size"):
        sthist.datasets.hest(tmp_path, SAMPLE)
    with pytest.raises(ValueError, match="repeated"):
        sthist.datasets.hest(tmp_path, [SAMPLE, SAMPLE])


def test_from_arrays_keeps_a_given_pyramid(tmp_path):
    image = np.full((512, 640, 3), 200, dtype=np.uint8)
    levels = [image, image[::2, ::2], image[::4, ::4]]
    xy = np.array([[100.0, 100.0], [300.0, 200.0]])
    sdata = sthist.datasets.from_arrays(
        np.ones((2, 2)), xy, levels, microns_per_pixel=0.5, spot_diameter_um=55
    )
    shapes = [sdata.images["he"][f"scale{i}"]["image"].shape for i in range(3)]
    assert shapes == [(3, 512, 640), (3, 256, 320), (3, 128, 160)]
    with pytest.raises(ValueError, match="finest first"):
        sthist.datasets.from_arrays(
            np.ones((2, 2)), xy, levels[::-1], microns_per_pixel=0.5, spot_diameter_um=55
        )
