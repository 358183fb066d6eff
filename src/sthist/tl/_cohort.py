"""``sthist.tl.predict_stores``: prediction over a cohort of zarr stores, spread over processes by Lightning."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from sthist._constants import Key
from sthist._core._checks import check_accelerator, check_key_name
from sthist._logging import logger

#: Options of :func:`sthist.tl.predict` that :func:`predict_stores` passes on.
PREDICT_OPTIONS = frozenset(
    {"genes", "k", "retrieval_weight", "qc_column", "batch_size", "tta_views", "smooth_um", "image_key", "table_key",
     "coordinate_system"}
)  # fmt: skip


def predict_stores(
    stores: Sequence[str | Path],
    model: str | Path,
    *,
    key_added: str = Key.obsm.PREDICTION,
    overwrite: bool = False,
    accelerator: str = "auto",
    devices: int | str | list = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    resume: bool = False,
    **predict_options,
) -> pd.DataFrame:
    """Predict expression at the spots of many SpatialData stores, the stores shared among processes.

    Cohort-scale prediction: Lightning (Fabric) starts one process per device and node (or joins the
    processes ``srun``/``torchrun`` started), process ``r`` of ``n`` predicts stores ``r, r + n, ...`` with
    :func:`sthist.tl.predict` on its own device, and writes each result into its store under the store's
    writer lock, as ``sthist predict`` does. Each store is predicted whole by one process, so the results
    are those of a single process, whatever the number of processes.

    Parameters
    ----------
    stores
        Paths of SpatialData zarr stores (each with image, spots and a table; expression need not be
        measured). Every store is checked (exists, writable, no prediction under ``key_added`` unless
        ``overwrite``) before any process starts.
    model
        Path of a saved model (:meth:`sthist.models.SthistModel.save`); each process loads it.
    key_added, overwrite
        As in :func:`sthist.tl.predict`.
    accelerator, devices, num_nodes, strategy
        Passed to :class:`lightning.fabric.Fabric`: e.g. ``devices=4`` on a GPU node, ``num_nodes=2`` under
        SLURM (one task per device, started by ``srun``), ``strategy='ddp_spawn'`` to start the processes
        from an interactive session. One device by default (no extra process).
    resume
        Skip the stores that already hold a prediction under ``key_added`` by this same saved model (its
        weights' checksum is recorded with every prediction), so that an interrupted cohort job goes on where
        it stopped; each store's prediction is written as soon as it is made, so nothing finished is lost.
    **predict_options
        Further options of :func:`sthist.tl.predict`: ``genes``, ``k``, ``qc_column``, ``batch_size``,
        ``retrieval_weight``, ``tta_views``, ``smooth_um``, ``image_key``, ``table_key``, ``coordinate_system``.

    Returns
    -------
    One row per store, in the order given: ``store``, ``rank`` (the process that predicted it; -1 for a store
    skipped by ``resume``), ``n_spots`` (spots predicted), ``seconds`` and ``resumed``. On processes other than rank 0 under SLURM or torchrun,
    the same table.

    Examples
    --------
    >>> import sthist
    >>> sthist.tl.predict_stores(["C1.zarr", "C2.zarr"], "my-model", devices=2)  # doctest: +SKIP
    """
    from lightning.fabric import Fabric

    from sthist.io import check_writable

    unknown = sorted(set(predict_options) - PREDICT_OPTIONS)
    if unknown:
        raise TypeError(
            f"predict_stores got unknown options {unknown}; it passes on {sorted(PREDICT_OPTIONS)} to tl.predict."
        )
    check_key_name(key_added)
    check_accelerator(accelerator)
    model_path = Path(model)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_path} is not a saved sthist model (no config.json); save one with model.save(path) and "
            "pass its path: every process loads it."
        )
    paths = [str(Path(store)) for store in stores]
    if not paths:
        raise ValueError("Give at least one store.")
    duplicated = sorted({p for p in paths if paths.count(p) > 1})
    if duplicated:
        raise ValueError(f"Stores given more than once: {duplicated}; each store is predicted once.")
    done = _done_by(paths, model_path, key_added) if resume else {}
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path} does not exist or is not a SpatialData zarr store (a folder).")
        check_writable(path)
        if not overwrite and path not in done:
            _check_free(path, key_added)
    todo = [path for path in paths if path not in done]
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy)
    rows = fabric.launch(_predict_share, todo, str(model_path), key_added, overwrite, predict_options)  # type: ignore[arg-type]
    rows += [
        {"store": path, "rank": -1, "n_spots": n, "seconds": 0.0, "resumed": True} for path, n in done.items()
    ]
    table = pd.DataFrame(rows).set_index("store").loc[paths].reset_index()
    table["resumed"] = table.get("resumed", pd.Series(False, index=table.index)).fillna(False).astype(bool)
    return table


def _done_by(paths: list[str], model_path: Path, key_added: str) -> dict[str, int]:
    """Stores (→ spots predicted) whose tables hold a prediction under ``key_added`` by the saved model."""
    import json

    import spatialdata as sd

    checksum = json.loads((model_path / "config.json").read_text()).get("weights_sha256")
    done = {}
    for path in paths:
        if not Path(path).is_dir():
            continue
        for table in sd.read_zarr(path, selection=("tables",)).tables.values():
            record = table.uns.get(key_added)
            if (
                key_added in table.obsm
                and isinstance(record, Mapping)
                and record.get("model_sha256") == checksum
            ):
                done[path] = int(table.obsm[key_added].notna().all(axis=1).sum())
    return done


def _check_free(store: str, key_added: str) -> None:
    """Refuse a store whose tables already hold predictions under ``key_added`` (before any process starts)."""
    import spatialdata as sd

    tables = sd.read_zarr(store, selection=("tables",)).tables
    taken = [name for name, table in tables.items() if key_added in table.obsm or key_added in table.uns]
    if taken:
        raise ValueError(
            f"{store}: table {taken[0]!r} already has predictions under {key_added!r}; pass overwrite=True or "
            "another key_added."
        )


def _predict_share(fabric, stores, model_path, key_added, overwrite, options) -> list[dict]:
    """Predict this process's share of ``stores`` and return every process's records."""
    import spatialdata as sd
    import torch

    import sthist
    from sthist._core._elements import resolve_elements
    from sthist.io import update_table

    rank, world = fabric.global_rank, fabric.world_size
    device = fabric.device
    model = sthist.models.load(model_path)
    rows = []
    for store in stores[rank::world]:
        start = time.perf_counter()
        sdata = sd.read_zarr(store)
        elements = resolve_elements(
            sdata,
            image_key=options.get("image_key"),
            table_key=options.get("table_key"),
            coordinate_system=options.get("coordinate_system", "global"),
        )
        sthist.tl.predict(
            sdata, model, key_added=key_added, overwrite=overwrite, device=str(device),
            **{**options, "table_key": elements.table_key, "coordinate_system": elements.coordinate_system},
        )  # fmt: skip
        update_table(
            sdata, elements.table_key, obsm=[key_added, Key.obsm.uncertainty(key_added)], uns=[key_added],
            overwrite=overwrite,
        )  # fmt: skip
        predicted = sdata.tables[elements.table_key].obsm[key_added]
        rows.append(
            {
                "store": store,
                "rank": rank,
                "n_spots": int(predicted.notna().all(axis=1).sum()),
                "seconds": time.perf_counter() - start,
            }
        )
        logger.info("rank %d/%d predicted %s (%d spots)", rank, world, store, rows[-1]["n_spots"])
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    fabric.barrier()
    return rows
