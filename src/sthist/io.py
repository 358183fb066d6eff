"""Writing results into a SpatialData zarr store: each element atomically, nothing existing lost silently."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from sthist._logging import logger

__all__ = ["write_elements"]

_KINDS = ("images", "labels", "points", "shapes", "tables")


def write_elements(sdata, elements: Sequence[tuple[str, str]], *, overwrite: bool = False) -> None:
    """Write in-memory elements of ``sdata`` into its zarr store (``sdata.path``), one atomic step each.

    Each element is first written completely into a temporary store beside the target, then moved into
    place by a directory rename; the store's consolidated metadata is refreshed last. An interruption
    before the move leaves the store as it was (the temporary store is removed, or ignored if the process
    died); existing elements are replaced only with ``overwrite=True``.

    Parameters
    ----------
    sdata
        A SpatialData object backed by a zarr store.
    elements
        ``(kind, name)`` pairs, e.g. ``[("shapes", key), ("tables", key + "_table")]`` for the tiles of
        :func:`sthist.tl.predict_tiles`.
    overwrite
        Replace elements of the same name in the store.

    Returns
    -------
    ``None``; the elements are in the store, which keeps everything else it held.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import spatialdata as sd
    >>> import sthist
    >>> sdata = sthist.datasets.toy(1)["toy0"]
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "section.zarr"
    >>> sdata.write(store)
    >>> sdata.tables["table"].obs["checked"] = True
    >>> sthist.io.write_elements(sdata, [("tables", "table")], overwrite=True)
    >>> bool(sd.read_zarr(store).tables["table"].obs["checked"].all())
    True
    """
    from spatialdata import SpatialData

    if sdata.path is None:
        raise ValueError(
            "The SpatialData object is not backed by a zarr store; write it first with `sdata.write(path)`."
        )
    store = Path(sdata.path)
    for kind, name in elements:
        if kind not in _KINDS:
            raise ValueError(f"Unknown element kind {kind!r}; expected one of {_KINDS}.")
        if name not in getattr(sdata, kind):
            raise KeyError(f"sdata.{kind} has no element {name!r} to write.")
        if (store / kind / name).exists() and not overwrite:
            raise ValueError(f"{store / kind / name} exists already; pass overwrite=True to replace it.")
    staging = store.parent / f".{store.name}.sthist-{uuid.uuid4().hex}"
    try:
        subset: dict[str, dict] = {kind: {} for kind in _KINDS}
        for kind, name in elements:
            subset[kind][name] = getattr(sdata, kind)[name]
        SpatialData(**subset).write(staging / "elements.zarr")
        staged = staging / "elements.zarr"
        for kind, name in elements:
            target = store / kind / name
            if not (store / kind).exists():
                (store / kind).mkdir()
                shutil.copy2(staged / kind / "zarr.json", store / kind / "zarr.json")
            if target.exists():
                os.replace(target, staging / f"replaced-{kind}-{name}")
            os.replace(staged / kind / name, target)
            logger.info("wrote %s/%s into %s", kind, name, store)
        sdata.write_consolidated_metadata()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
