"""Whole-slide prediction with bounded memory: peak RSS and tiles/s on synthetic slides of two sizes.

Each synthetic RGB slide (0.5 µm/px, a disc of textured "tissue" on glass, 5-level pyramid) is written
lazily to a zarr store by dask, block by block, never held in memory. A separate process then reads it
back and runs ``sthist.tl.predict_tiles`` with a CMRCNet model (EfficientNet-Lite0) and reports its own peak
resident memory and throughput, and the bare encoder's throughput on batches of the same shape in the same
process (the ceiling: reading and resampling run in a thread beside the forward pass); the two sizes run in
one invocation so their memory can be compared. Each worker process calls ``predict_tiles`` twice on its
slide: the first call pays the once-per-process costs, the second is what each further slide costs. The
sparse stride (448 µm, 4 tile sides) is the worst case for reading (each 2,048 px chunk decoded serves about
five tiles); ``--dense-sizes`` slides are also predicted at the default stride (tiles side by side).

    python benchmarks/tiles.py [--sizes 20000 40000] [--stride-um 448] [--dense-sizes 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

MICRONS_PER_PIXEL = 0.5


def _texture(block_info=None):
    import numpy as np

    (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
    size = block_info[None]["shape"][1]
    ys, xs = np.mgrid[y0:y1, x0:x1]
    centre = size / 2
    tissue = (xs - centre) ** 2 + (ys - centre) ** 2 < (0.3 * size) ** 2
    pattern = ((xs * 7 + ys * 13) % 61).astype(np.uint8)
    out = np.full((3, y1 - y0, x1 - x0), 242, dtype=np.uint8)
    out[0][tissue] = 190 - pattern[tissue]
    out[1][tissue] = 110 + pattern[tissue] // 2
    out[2][tissue] = 175 - pattern[tissue] // 3
    return out


def write_slide(size: int, store: Path) -> None:
    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    import sthist

    side = (2048,) * (size // 2048) + ((size % 2048,) if size % 2048 else ())
    pixels = da.map_blocks(_texture, dtype="uint8", chunks=((3,), side, side))
    image = Image2DModel.parse(
        pixels, dims=("c", "y", "x"), scale_factors=[2, 2, 2, 2, 2], chunks=(3, 2048, 2048)
    )
    sdata = SpatialData(images={"he": image})
    sthist.pp.set_microns_per_pixel(sdata, MICRONS_PER_PIXEL, source="synthetic slide")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(store)


def worker(store: str, model_folder: str, stride_um: float) -> None:
    import spatialdata as sd

    import sthist
    import sthist.tl  # imported once per process: not part of a slide's prediction

    sthist.settings.progress = False
    sdata = sd.read_zarr(store)
    model = sthist.models.load(model_folder)
    # Two calls on the same slide: the first pays what a process pays once (the encoder's first batch, the
    # store's first reads); the second is what every further slide of a cohort costs.
    seconds = []
    for _ in range(2):
        tick = time.perf_counter()
        sthist.tl.predict_tiles(sdata, model, stride_um=stride_um, overwrite=True)
        seconds.append(time.perf_counter() - tick)
    tiles = sdata.tables["sthist_tiles_table"].n_obs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # The bare encoder in the same process, on batches of the same size and shape as predict_tiles' (its
    # default batch size, 224 px patches, uint8 in, its own normalisation included): the ceiling for tile
    # throughput.
    import inspect

    import torch

    size = inspect.signature(sthist.tl.predict_tiles).parameters["batch_size"].default
    encoder = model.encoder.eval()
    batch = torch.randint(0, 256, (size, 3, 224, 224), dtype=torch.uint8)
    n_batches = max(3, min(40, tiles // size))
    # Under the allocator setting predict_tiles encodes under (settings.retain_freed_memory).
    from sthist._settings import retained_memory

    with torch.inference_mode(), retained_memory():
        encoder(batch)  # warm-up
        tick = time.perf_counter()
        for _ in range(n_batches):
            encoder(batch)
        encoder_seconds = time.perf_counter() - tick
    print(json.dumps({"tiles": tiles, "seconds": seconds, "peak_rss_gib": peak,
                      "encoder_patches_per_s": size * n_batches / encoder_seconds}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 40000])
    parser.add_argument("--stride-um", type=float, default=448.0)
    parser.add_argument(
        "--dense-sizes", type=int, nargs="*", default=[20000],
        help="slides also predicted at the default stride (tiles side by side, 112 µm)",
    )  # fmt: skip
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], float(args.worker[2]))
        return

    import sthist
    from sthist._core._report import markdown_table

    sthist.settings.progress = False
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        toy = sthist.datasets.toy(1, grid=8, n_genes=20, random_state=0)
        model = sthist.tl.fit(toy, method="cmrcnet", max_epochs=2, batch_size=32, k=10, training={"views": 1})
        model.save(folder / "model")
        written: dict[int, float] = {}
        for size, stride in [(size, args.stride_um) for size in args.sizes] + [
            (size, 112.0) for size in args.dense_sizes
        ]:
            store = folder / f"slide{size}.zarr"
            if size not in written:
                tick = time.perf_counter()
                _write_in_subprocess(size, store)
                written[size] = time.perf_counter() - tick
            disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(store), str(folder / "model"), str(stride)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            encoder = result["encoder_patches_per_s"]
            first, second = (result["tiles"] / s for s in result["seconds"])
            rows.append(
                {
                    "slide (px)": f"{size:,} × {size:,}",
                    "raw RGB size (GiB)": round(3 * size * size / 2**30, 2),
                    "zarr on disk (MiB)": round(disk, 1),
                    "write (s)": round(written[size]),
                    "stride (µm)": f"{stride:g}",
                    "tiles": result["tiles"],
                    "tiles/s, first call": round(first, 1),
                    "tiles/s, second call": round(second, 1),
                    "encoder alone (patches/s)": round(encoder, 1),
                    "÷ encoder, first / second": f"{first / encoder:.2f} / {second / encoder:.2f}",
                    "peak RSS (GiB)": round(result["peak_rss_gib"], 2),
                }
            )
    print(
        f"predict_tiles with CMRCNet (EfficientNet-Lite0), 112 µm tiles, {MICRONS_PER_PIXEL} µm/px, 2048 px "
        "chunks; two calls per process on the same slide; peak RSS of the predicting process "
        f"(MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}):\n"
    )
    print(markdown_table(rows))


def _write_in_subprocess(size: int, store: Path) -> None:
    folder = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {folder!r}); import tiles, pathlib; tiles.write_slide({size}, pathlib.Path({str(store)!r}))"
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
