"""Patch-extraction throughput: in-memory and lazy paths beside raw numpy slicing of the same array.

Runs on the real HER2ST C2 image (9,270 × 9,920 px JPEG, 0.688 µm/px) with randomly placed spots, written
to a zarr store and read back so that the lazy path reads chunks from disk. All figures come from one run;
ratios are against the raw numpy rates measured in the same run.

    python benchmarks/patches.py [--spots 3000] [--patch-size-um 112] [--patch-size-px 224]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _section_with_random_spots(n_spots: int, patch_size_um: float, seed: int):
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    import sthist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = sthist.datasets.her2st(["C2"], check_registration=False)["C2"]
    mpp = sthist.pp.get_microns_per_pixel(real)
    height, width = real.images["he"]["scale0"]["image"].shape[1:]
    margin = patch_size_um / mpp
    rng = np.random.default_rng(seed)
    xy = np.c_[rng.uniform(margin, width - margin, n_spots), rng.uniform(margin, height - margin, n_spots)]
    table = TableModel.parse(
        ad.AnnData(
            X=np.zeros((n_spots, 1), dtype=np.float32),
            obs=pd.DataFrame(
                {"region": pd.Categorical(["spots"] * n_spots), "spot_id": np.arange(n_spots)},
                index=[f"spot{i}" for i in range(n_spots)],
            ),
        ),
        region="spots",
        region_key="region",
        instance_key="spot_id",
    )
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(n_spots, 50 / mpp)}, geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1])
        ),
        transformations={"global": Identity()},
    )
    sdata = SpatialData(images={"he": real.images["he"]}, shapes={"spots": shapes}, tables={"table": table})
    sthist.pp.set_microns_per_pixel(sdata, mpp, source="HER2ST C2 fit")
    return sdata


def _rate(function, n: int, repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spots", type=int, default=3000)
    parser.add_argument("--patch-size-um", type=float, default=112.0)
    parser.add_argument("--patch-size-px", type=int, default=224)
    args = parser.parse_args()

    import spatialdata as sd
    import torch
    from PIL import Image

    from sthist.data import SpotPatchDataset

    torch.set_num_threads(1)
    sdata = _section_with_random_spots(args.spots, args.patch_size_um, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "section.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's notices about future defaults
            sdata.write(store)
        on_disk = sd.read_zarr(store)
        on_disk.attrs.update(sdata.attrs)
        options = {"patch_size_um": args.patch_size_um, "patch_size_px": args.patch_size_px}
        eager = SpotPatchDataset(on_disk, in_memory=True, **options)
        lazy = SpotPatchDataset(on_disk, in_memory=False, **options)
        n = len(eager)
        section = eager._sections[0]
        pixels = section.reader.pixels  # the same materialised array the in-memory path slices
        windows, boxes = section.windows, section.boxes
        size = args.patch_size_px

        def raw_slices():
            for y0, y1, x0, x1 in windows:
                np.ascontiguousarray(pixels[y0:y1, x0:x1])

        def raw_slices_resampled():
            for (y0, y1, x0, x1), (bx0, by0, bx1, by1) in zip(windows, boxes, strict=True):
                crop = pixels[y0:y1, x0:x1]
                np.asarray(
                    Image.fromarray(crop).resize(
                        (size, size), Image.Resampling.BILINEAR, box=(bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
                    )
                )

        def in_memory():
            for index in range(n):
                eager.patch(index)

        def in_memory_items():
            for index in range(n):
                eager[index]

        def lazy_path():
            lazy._sections[0].reader._tiles.clear()
            for index in range(n):
                lazy.patch(index)

        rates = {
            "raw numpy slice (copy)": _rate(raw_slices, n),
            "raw numpy slice + same resampling": _rate(raw_slices_resampled, n),
            "in-memory path (patch)": _rate(in_memory, n),
            "in-memory path (dataset item, tensor)": _rate(in_memory_items, n),
            "lazy path (zarr chunks, tile cache)": _rate(lazy_path, n, repeats=2),
        }
        geometry = eager.geometry(eager.sections[0])
    reference = rates["raw numpy slice + same resampling"]
    print(
        f"{n} patches of {args.patch_size_um:g} µm ({geometry.crop_size[0]:.0f} px at level {geometry.level.index}, "
        f"{geometry.level_microns_per_pixel[0]:.3f} µm/px) resampled to {size} px; 1 thread; "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}\n"
    )
    print("| path | patches/s | ratio to raw slice + resampling | ratio to raw slice |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        print(
            f"| {name} | {rate:,.0f} | {rate / reference:.2f} | {rate / rates['raw numpy slice (copy)']:.3f} |"
        )
    ratio = rates["in-memory path (patch)"] / reference
    print(f"\nin-memory path at {ratio:.0%} of the raw numpy rate with the same resampling (target ≥ 50 %).")


if __name__ == "__main__":
    main()
