"""Writing predictions into a zarr store: the cost of each new prediction as the table fills up.

A real HER2ST section (C5: 181 spots, 15,721 genes in ``X``) is written to a zarr store. Three predictions
(a 250-gene mean and its uncertainty in ``obsm``, provenance in ``uns``) are then written one after the
other, as three ``sthist predict --key`` runs would, in two ways measured in the same run:

- ``whole table``: what ``sthist.io.update_table`` did before: read the stored table, add the entries and
  write the whole table back atomically (``X``, ``var`` and every earlier prediction included);
- ``new entries only``: what it does now: write only the new ``obsm``/``uns`` entries, each moved in
  atomically.

    python benchmarks/writing.py [--section C5] [--genes 250] [--predictions 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _whole_table(sdata, keys: list[str]) -> None:
    """The earlier update_table: the stored table read, the entries added, the whole table written back."""
    import anndata as ad

    import sthist

    store = Path(sdata.path)
    with sthist.io.store_lock(store):
        stored = ad.read_zarr(store / "tables" / "table")
        for key in keys:
            stored.obsm[key] = sdata.tables["table"].obsm[key]
        stored.uns[keys[0]] = sdata.tables["table"].uns[keys[0]]
        sdata.tables["table"] = stored
        sthist.io._write_locked(sdata, store, [("tables", "table")])


def _new_entries(sdata, keys: list[str]) -> None:
    import sthist

    sthist.io.update_table(sdata, "table", obsm=keys, uns=[keys[0]])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--section", default="C5")
    parser.add_argument("--genes", type=int, default=250)
    parser.add_argument("--predictions", type=int, default=3)
    args = parser.parse_args()

    import pandas as pd
    import spatialdata as sd

    import sthist
    from sthist._core._report import markdown_table

    warnings.simplefilter("ignore")
    section = sthist.datasets.her2st([args.section])[args.section]
    table = section.tables["table"]
    genes = [f"gene{i}" for i in range(args.genes)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, write in (("whole table (before)", _whole_table), ("new entries only (now)", _new_entries)):
            store = Path(folder) / f"{write.__name__}.zarr"
            section.write(store)
            sdata = sd.read_zarr(store)
            seconds = []
            for i in range(args.predictions):
                keys = [f"pred{i}", f"pred{i}_uncertainty"]
                for offset, key in enumerate(keys):
                    values = np.random.default_rng(10 * i + offset).random(
                        (table.n_obs, args.genes), "float32"
                    )
                    sdata.tables["table"].obsm[key] = pd.DataFrame(
                        values, index=table.obs_names, columns=genes
                    )
                sdata.tables["table"].uns[keys[0]] = {"method": "benchmark", "genes": genes}
                tick = time.perf_counter()
                write(sdata, keys)
                seconds.append(time.perf_counter() - tick)
            stored = sd.read_zarr(store).tables["table"]
            assert all(f"pred{i}" in stored.obsm for i in range(args.predictions))
            rows.append(
                {"writing": name, **{f"prediction {i + 1} (s)": round(s, 2) for i, s in enumerate(seconds)}}
            )
    print(
        f"HER2ST {args.section}: {table.n_obs} spots × {table.n_vars:,} genes in X; each prediction is two "
        f"{args.genes}-gene obsm DataFrames and one uns entry:\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
