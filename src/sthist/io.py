"""Writing results into a SpatialData zarr store, with nothing the store held lost.

Writers exclude each other (a lock file in the store), each element moves in atomically, and an element
moved aside is put back when a write fails or the process is killed half-way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sthist._logging import logger

__all__ = ["check_writable", "store_lock", "update_table", "write_elements"]

_KINDS = ("images", "labels", "points", "shapes", "tables")
#: Lock file inside a store; every sthist writer holds it while it changes the store.
LOCK_FILE = ".sthist.lock"
#: Seconds a writer waits for another writer of the same store before giving up.
LOCK_TIMEOUT_S = 3600.0
_STAGING = ".sthist-staging-"
_REPLACED = "replaced"


def _store_path(sdata) -> Path:
    if sdata.path is None:
        raise ValueError(
            "The SpatialData object is not backed by a zarr store; write it first with `sdata.write(path)`."
        )
    return Path(sdata.path)


def check_writable(store: str | Path) -> None:
    """Refuse, before any work, a store that is missing or cannot be written (read-only folder or file system).

    Parameters
    ----------
    store
        Path of the zarr store.

    Returns
    -------
    ``None``; a :class:`PermissionError` or :class:`FileNotFoundError` says what is wrong.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import sthist
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "section.zarr"
    >>> sthist.datasets.toy(1)["toy0"].write(store)
    >>> sthist.io.check_writable(store)
    """
    store = Path(store)
    if not store.is_dir():
        raise FileNotFoundError(f"{store} is not a zarr store (no such folder).")
    probe = store / f".sthist-write-test-{uuid.uuid4().hex}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"{store} cannot be written ({error.strerror}); sthist writes results into the store. Copy it somewhere "
            "writable or fix its permissions."
        ) from None


@contextlib.contextmanager
def store_lock(store: str | Path, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the writer lock of a zarr store (a lock file inside it), so that writers exclude each other.

    Processes exclude each other through the lock file, threads of one process through a re-entrant lock
    (a thread holding it may take it again). Stale staging folders of writers that were killed are
    recovered as soon as the lock is taken (see :func:`write_elements`).

    Parameters
    ----------
    store
        Path of the zarr store.
    timeout
        Seconds to wait for another writer before giving up with a :class:`TimeoutError`.

    Returns
    -------
    A context manager; the store is locked inside the ``with`` block.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import sthist
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "section.zarr"
    >>> sthist.datasets.toy(1)["toy0"].write(store)
    >>> with sthist.io.store_lock(store):
    ...     pass  # read, change and write elements here
    """
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    store = Path(store)
    check_writable(store)
    with _registry_guard:
        thread_lock, lock = _locks.setdefault(
            store.resolve(), (threading.RLock(), FileLock(store / LOCK_FILE, thread_local=False))
        )
    if not thread_lock.acquire(timeout=timeout):
        raise TimeoutError(
            f"Another thread has been writing into {store} for {timeout:g} s; wait for it to finish."
        )
    try:
        try:
            lock.acquire(timeout=timeout)
        except LockTimeout:
            raise TimeoutError(
                f"Another process has been writing into {store} for {timeout:g} s (lock {store / LOCK_FILE}); "
                "wait for it to finish."
            ) from None
        except OSError as error:
            # Network file systems without lock support (NFS without lockd, some FUSE mounts) refuse flock.
            raise OSError(
                f"{store} is on a file system that does not support file locks ({error.strerror or error}); "
                "sthist locks a store while it writes, so that writers cannot overwrite each other's results. "
                "Work on a copy of the store on a local disk, then copy it back."
            ) from None
        try:
            if lock.lock_counter == 1:
                _recover(store)
            yield
        finally:
            lock.release()
    finally:
        thread_lock.release()


_locks: dict[Path, tuple[Any, Any]] = {}
_registry_guard = threading.Lock()


def _staging_folders(store: Path) -> list[Path]:
    """Staging folders of writers of ``store``: inside it, and beside it (where older versions staged)."""
    return sorted([*store.glob(f"{_STAGING}*"), *store.parent.glob(f".{store.name}{_STAGING}*")])


def _recover(store: Path) -> None:
    """Put back elements (and table entries) that a killed writer had moved aside, then remove its staging folder.

    What was moved aside lies at its path within the store under the staging folder's ``replaced`` folder:
    ``tables/t`` for an element, ``tables/t/obsm/key`` for an entry of a table (:func:`update_table`).
    """
    for staging in _staging_folders(store):
        for old in _zarr_nodes(staging / _REPLACED):
            relative = old.relative_to(staging / _REPLACED)
            target = store / relative
            if not target.exists() and target.parent.is_dir():
                os.replace(old, target)
                logger.warning("restored %s of %s from an interrupted write (%s)", relative, store, staging)
        shutil.rmtree(staging, ignore_errors=True)


def _zarr_nodes(folder: Path) -> list[Path]:
    """The outermost zarr groups and arrays below ``folder`` (folders with zarr metadata), in sorted order."""
    if not folder.is_dir():
        return []
    if any((folder / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")):
        return [folder]
    return [node for child in sorted(folder.iterdir()) for node in _zarr_nodes(child)]


def write_elements(sdata, elements: Sequence[tuple[str, str]], *, overwrite: bool = False) -> None:
    """Write in-memory elements of ``sdata`` into its zarr store (``sdata.path``), one atomic step each.

    The store's writer lock (:func:`store_lock`) is held throughout. Each element is first written
    completely into a hidden staging store inside the target store (on its file system, also when the store
    is a mount point), then moved into place by a directory rename; an
    element it replaces is moved aside first and put back if anything fails (an error, Ctrl-C). A writer
    killed between the two renames leaves the old element in its staging folder; the next writer puts it
    back. The store's consolidated metadata is refreshed last. Existing elements are replaced only with
    ``overwrite=True``.

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
    store = _store_path(sdata)
    for kind, name in elements:
        if kind not in _KINDS:
            raise ValueError(f"Unknown element kind {kind!r}; expected one of {_KINDS}.")
        if name not in getattr(sdata, kind):
            raise KeyError(f"sdata.{kind} has no element {name!r} to write.")
    with store_lock(store):
        for kind, name in elements:
            if (store / kind / name).exists() and not overwrite:
                raise ValueError(f"{store / kind / name} exists already; pass overwrite=True to replace it.")
        _write_locked(sdata, store, elements)


def _write_locked(sdata, store: Path, elements: Sequence[tuple[str, str]]) -> None:
    from spatialdata import SpatialData

    zarr_format = _zarr_format(store)
    with _staging(store) as staging:
        subset: dict[str, dict] = {kind: {} for kind in _KINDS}
        for kind, name in elements:
            subset[kind][name] = getattr(sdata, kind)[name]
        staged = staging / "elements.zarr"
        SpatialData(**subset).write(staged, sdata_formats=_element_formats(zarr_format))
        for kind, _ in elements:
            if not (store / kind).exists():
                (store / kind).mkdir()
                for metadata in _METADATA_FILES[zarr_format]:
                    if (staged / kind / metadata).exists():
                        shutil.copy2(staged / kind / metadata, store / kind / metadata)
        _move_in(
            sdata, store, staging, [(staged / kind / name, Path(kind) / name) for kind, name in elements]
        )
    for kind, name in elements:
        logger.info("wrote %s/%s into %s", kind, name, store)


#: The files that hold a zarr group's metadata, by zarr format.
_METADATA_FILES = {2: (".zgroup", ".zattrs"), 3: ("zarr.json",)}


def _zarr_format(store: Path) -> int:
    """The zarr format (2 or 3) of a store's root group: what is written into it must have the same."""
    return 2 if (store / ".zgroup").exists() and not (store / "zarr.json").exists() else 3


def _element_formats(zarr_format: int) -> list | None:
    """The spatialdata element formats for a store of ``zarr_format``: the current ones (3), the last in zarr v2 (2).

    A store written by an older spatialdata is zarr v2; a zarr v3 element moved into it would not be read.
    """
    if zarr_format == 3:
        return None
    from spatialdata._io.format import (
        PointsFormatV01,
        RasterFormatV02,
        ShapesFormatV02,
        SpatialDataContainerFormatV01,
        TablesFormatV01,
    )

    return [
        SpatialDataContainerFormatV01(),
        RasterFormatV02(),
        ShapesFormatV02(),
        PointsFormatV01(),
        TablesFormatV01(),
    ]


@contextlib.contextmanager
def _staging(store: Path) -> Iterator[Path]:
    """A hidden staging folder inside the store, removed afterwards.

    Inside, so that it is on the store's own file system even when the store is a mount point (a container
    volume): every move into place is then a rename. Readers ignore it: it is no zarr node, and the store's
    consolidated metadata never lists it.
    """
    staging = store / f"{_STAGING}{uuid.uuid4().hex}"
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_in(sdata, store: Path, staging: Path, moves: Sequence[tuple[Path, Path]]) -> None:
    """Move staged folders to their paths in the store, each by a rename; undo every move if anything fails.

    ``moves`` holds (staged folder, path relative to the store). What a folder replaces is first moved aside
    to the same relative path under ``staging / 'replaced'``, where :func:`_recover` finds it if the process is
    killed between the two renames. The store's consolidated metadata is refreshed last.
    """
    moved_aside: list[tuple[Path, Path]] = []  # (old folder aside, its place in the store)
    moved_in: list[Path] = []
    try:
        for source, relative in moves:
            target = store / relative
            if target.exists():
                aside = staging / _REPLACED / relative
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, aside)
                moved_aside.append((aside, target))
            os.replace(source, target)
            moved_in.append(target)
        _refresh_consolidated(sdata, store, [relative for _, relative in moves])
    except BaseException:
        # Undo: the new folders out, the old ones back, so that the store is as it was.
        for target in moved_in:
            shutil.rmtree(target, ignore_errors=True)
        for aside, target in moved_aside:
            if aside.exists() and not target.exists():
                os.replace(aside, target)
        with contextlib.suppress(Exception):
            sdata.write_consolidated_metadata()
        raise


def _refresh_consolidated(sdata, store: Path, changed: Sequence[Path]) -> None:
    """Bring the store's consolidated metadata up to date after the folders at ``changed`` were replaced.

    A zarr v3 store keeps the metadata of all its nodes in its root ``zarr.json``. zarr's
    ``consolidate_metadata`` reads every node again: 0.8 s for a HER2ST section's store with two predictions,
    and each prediction adds 500 nodes. Here only the nodes at and below ``changed`` (and groups created above
    them) are read, the others are kept as they are, and the root file is replaced atomically; the result is
    what zarr's consolidation gives (tested). Anything else (a zarr v2 store, a store without consolidated
    metadata, a node whose metadata is not as expected) is consolidated by spatialdata as before.
    """
    import json
    import unicodedata

    root_file = store / "zarr.json"

    def entry(folder: Path) -> dict:
        """A node's metadata as zarr consolidates it (a group with its own, empty, consolidated metadata)."""
        node = json.loads((folder / "zarr.json").read_text())
        if node.get("node_type") == "group":
            if node.get("consolidated_metadata") is not None:
                raise ValueError(f"{folder} has consolidated metadata of its own")
            node["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
        elif node.get("node_type") != "array":
            raise ValueError(f"{folder}: unknown node type")
        return node

    try:
        root = json.loads(root_file.read_text())
        consolidated = root.get("consolidated_metadata") or {}
        nodes = consolidated.get("metadata")
        if consolidated.get("kind") != "inline" or not isinstance(nodes, dict):
            raise ValueError("no inline consolidated metadata")
        for relative in changed:
            key = relative.as_posix()
            for name in [n for n in nodes if n == key or n.startswith(f"{key}/")]:
                del nodes[name]
            for ancestor in reversed(relative.parents[:-1]):
                if ancestor.as_posix() not in nodes:
                    nodes[ancestor.as_posix()] = entry(store / ancestor)
            for folder, _, files in os.walk(store / relative):
                if "zarr.json" in files:
                    nodes[Path(folder).relative_to(store).as_posix()] = entry(Path(folder))
    except (OSError, ValueError, TypeError, AttributeError):
        sdata.write_consolidated_metadata()
        return
    # zarr's order: by depth, then by name (NFKC, case-folded).
    order = sorted(nodes, key=lambda n: (n.count("/"), unicodedata.normalize("NFKC", n).casefold()))
    consolidated["metadata"] = {name: nodes[name] for name in order}
    partial = root_file.with_name(f".zarr.json.{uuid.uuid4().hex}")
    partial.write_text(json.dumps(root, indent=2))
    os.replace(partial, root_file)


def update_table(
    sdata,
    table_key: str,
    *,
    obsm: Sequence[str] = (),
    uns: Sequence[str] = (),
    obs: Sequence[str] = (),
    overwrite: bool = False,
) -> None:
    """Add ``obs``, ``obsm`` and ``uns`` entries of an in-memory table to the same table in the store, keeping the rest.

    Under the store's writer lock, only the given entries are written into the stored table, each moved into
    place atomically (existing ones replaced only with ``overwrite=True``; ``obs`` is rewritten whole when it
    gains columns). Everything else the stored table holds (``X``, layers, other predictions, entries another
    process wrote since ``sdata`` was read) is kept and is not rewritten, so the cost does not grow with what
    the table already holds. ``sdata``'s table then gains the entries that the store has and it lacks.

    Parameters
    ----------
    sdata
        A SpatialData object backed by a zarr store, whose table ``table_key`` holds the new entries.
    table_key
        Name of the table.
    obsm
        ``obsm`` keys to add.
    uns
        ``uns`` keys to add.
    obs
        ``obs`` columns to add.
    overwrite
        Replace entries of the same name that the stored table has already.

    Returns
    -------
    ``None``; the store's table and ``sdata.tables[table_key]`` hold the entries.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> import spatialdata as sd
    >>> import sthist
    >>> sdata = sthist.datasets.toy(1)["toy0"]
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "section.zarr"
    >>> sdata.write(store)
    >>> sdata.tables["table"].obsm["score"] = np.ones((sdata.tables["table"].n_obs, 2))
    >>> sthist.io.update_table(sdata, "table", obsm=["score"])
    >>> sd.read_zarr(store).tables["table"].obsm["score"].shape
    (100, 2)
    """
    store = _store_path(sdata)
    if table_key not in sdata.tables:
        raise KeyError(f"sdata.tables has no table {table_key!r}.")
    with store_lock(store):
        stored_path = store / "tables" / table_key
        if not stored_path.exists():
            _write_locked(sdata, store, [("tables", table_key)])
            return
        _add_entries(sdata, store, table_key, obsm=obsm, uns=uns, obs=obs, overwrite=overwrite)


def _add_entries(sdata, store: Path, table_key: str, *, obsm, uns, obs, overwrite: bool) -> None:
    """Write the given entries into the stored table (the store's lock held), each moved in atomically.

    Only those entries are written: ``obsm`` and ``uns`` entries are each a folder of the table's group, and
    ``obs`` is rewritten whole when it gains columns (it is small). The rest of the table (``X``, layers, entries
    of earlier predictions) is neither read nor written again.
    """
    import zarr

    read_elem, write_elem = _elem_io()
    table = sdata.tables[table_key]
    stored_path = store / "tables" / table_key
    group = zarr.open_group(stored_path, mode="r")
    stored_obs = read_elem(group["obs"])
    if not stored_obs.index.equals(table.obs_names):
        raise ValueError(
            f"Table {table_key!r} in {store} no longer has the rows it had when it was read (another process "
            "rewrote it); read the store again and repeat."
        )
    members = {
        sub: set(node.keys()) if isinstance(node := group.get(sub), zarr.Group) else set()
        for sub in ("obsm", "uns")
    }
    clashes = (
        [f"obsm[{k!r}]" for k in obsm if k in members["obsm"]]
        + [f"uns[{k!r}]" for k in uns if k in members["uns"]]
        + [f"obs[{k!r}]" for k in obs if k in stored_obs.columns]
    )
    if clashes and not overwrite:
        raise ValueError(
            f"Table {table_key!r} in {store} already has {clashes}; pass overwrite=True or another key."
        )
    # Entries another process wrote since sdata was read: sdata's table gains them (read from the store).
    for sub, values in (("obsm", table.obsm), ("uns", table.uns)):
        for key in sorted(members[sub] - set(values) - set(obsm if sub == "obsm" else uns)):
            values[key] = read_elem(group[f"{sub}/{key}"])
    for column in stored_obs.columns.difference(table.obs.columns):
        table.obs[column] = stored_obs[column]
    for column in obs:
        stored_obs[column] = table.obs[column]
    entries = [("obsm", key, table.obsm[key]) for key in obsm] + [("uns", key, table.uns[key]) for key in uns]
    relative = [Path(sub) / key for sub, key, _ in entries] + ([Path("obs")] if obs else [])
    with _staging(store) as staging:
        staged = zarr.open_group(staging / "entries.zarr", mode="w", zarr_format=group.metadata.zarr_format)
        for sub, key, value in entries:
            _write_entry(staged.require_group(sub), key, value)
        if obs:
            write_elem(staged, "obs", stored_obs)
        for path in relative:
            (stored_path / path).parent.mkdir(exist_ok=True)  # a table written without that group
        moves = [(staging / "entries.zarr" / path, Path("tables") / table_key / path) for path in relative]
        _move_in(sdata, store, staging, moves)
    logger.info("wrote %s into table %r of %s", [str(p) for p in relative], table_key, store)


def _write_entry(group, key: str, value) -> None:
    """``anndata.io.write_elem``, with the gene columns of a numeric DataFrame written concurrently.

    anndata writes each column of an ``obsm`` DataFrame as its own zarr array, one after the other, which
    dominates the writing of a prediction of hundreds of genes (``benchmarks/results/writing.md``). Here anndata writes the
    index and the first column (its encoding, attributes and codecs, whatever its version), and the other
    columns are created beside it with the first column's settings, all at once through zarr's asynchronous
    API: the same files as ``write_elem``'s (tested), sooner.
    Anything else (columns of mixed, categorical, string or nullable types; a single column) goes through
    ``write_elem``.
    """
    import numpy as np
    import pandas as pd

    _, write_elem = _elem_io()
    numeric = (
        isinstance(value, pd.DataFrame)
        and value.shape[1] > 1
        and value.columns.is_unique
        and all(isinstance(c, str) for c in value.columns)
        and isinstance(value.dtypes.iloc[0], np.dtype)
        and value.dtypes.iloc[0].kind in "biuf"
        and (value.dtypes == value.dtypes.iloc[0]).all()
    )
    if not numeric:
        write_elem(group, key, value)
        return
    import asyncio

    import zarr
    import zarr.api.asynchronous as zarr_async
    from zarr.core.sync import sync

    write_elem(group, key, value.iloc[:, :1])
    node = group[key]
    first = node[value.columns[0]]
    if not isinstance(first, zarr.Array) or dict(first.attrs).get("encoding-type") != "array":
        # An anndata that encodes columns otherwise: let it write the whole frame.
        del group[key]
        write_elem(group, key, value)
        return
    settings: dict[str, Any] = {
        "chunks": first.chunks, "filters": first.filters, "compressors": first.compressors,
        "fill_value": first.fill_value, "attributes": dict(first.attrs), "zarr_format": first.metadata.zarr_format,
    }  # fmt: skip
    if first.metadata.zarr_format == 3:
        settings["serializer"] = first.serializer

    # Each new array checks and creates its parent groups up to the store's root: on a local store, a store
    # rooted at the frame's folder leaves it one parent (a third less time for 250 columns).
    if isinstance(node.store, zarr.storage.LocalStore):
        store, prefix = zarr.storage.LocalStore(Path(node.store.root) / node.path), ""
    else:
        store, prefix = node.store, f"{node.path}/"

    async def create_columns() -> None:
        await asyncio.gather(
            *(
                zarr_async.create_array(
                    store=store,
                    name=f"{prefix}{column}",
                    data=np.ascontiguousarray(value[column]),
                    **settings,
                )
                for column in value.columns[1:]
            )
        )

    sync(create_columns())
    # Only now does the frame list its other columns: a failure above leaves a readable one-column frame
    # in the staging folder, never a frame naming columns that are not there.
    node.attrs["column-order"] = list(value.columns)


def _elem_io():
    """The ``read_elem`` and ``write_elem`` of anndata (``anndata.io`` from 0.11, ``anndata.experimental`` before)."""
    try:
        from anndata.io import read_elem, write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem, write_elem
    return read_elem, write_elem
