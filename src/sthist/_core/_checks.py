"""Checks of user input made before any expensive work, each failing with one line that says what to fix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sthist._constants import Key
from sthist._core._config import is_positive_integer


def check_positive_integer(value, name: str) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an integer ≥ 1."""
    if not is_positive_integer(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_smoothing(radius_um, name: str = "smooth_um") -> float:
    """A smoothing radius in µm as a float (0: no smoothing), or a ValueError when it is not a distance ≥ 0."""
    is_number = isinstance(radius_um, int | float | np.integer | np.floating) and not isinstance(
        radius_um, bool
    )
    if not is_number or not np.isfinite(radius_um) or radius_um < 0:
        raise ValueError(f"{name} must be a distance in µm (0 for none), got {radius_um!r}.")
    return float(radius_um)


def gene_list(genes, name: str = "genes") -> list[str] | None:
    """A list of distinct gene names from ``genes`` (``None`` stays ``None``); a single string is refused."""
    if genes is None:
        return None
    if isinstance(genes, str):
        raise TypeError(
            f"{name} must be a list of gene names, not the string {genes!r}; write {name}=[{genes!r}]."
        )
    if not isinstance(genes, Sequence | pd.Index | np.ndarray | set | frozenset | dict):
        raise TypeError(f"{name} must be a list of gene names, got {type(genes).__name__}.")
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError(f"{name} is empty; give at least one gene.")
    duplicated = sorted({g for g in genes if genes.count(g) > 1})
    if duplicated:
        raise ValueError(f"{name} names genes more than once: {duplicated[:10]}; give each gene once.")
    return genes


def check_key_name(key, name: str = "key_added") -> str:
    """A key that can name an element or an ``obsm``/``uns`` entry in a zarr store (letters, digits, ``_-.``)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{name} must be a non-empty string, got {key!r}.")
    if key in (".", "..") or key.startswith("__") or not all(c.isalnum() or c in "_-." for c in key):
        raise ValueError(
            f"{name}={key!r} cannot be stored in a zarr store; use letters, digits, '_', '-' and '.' only "
            "(not starting with '__')."
        )
    return key


#: ``uns`` entries that sthist or spatialdata keep for themselves; results never replace them.
RESERVED_UNS = ("spatialdata_attrs", Key.uns.NORMALIZATION)


def check_table_key_added(table, key: str) -> None:
    """Refuse a ``key_added`` that would replace an entry sthist does not own, whatever ``overwrite`` says."""
    reserved = {*RESERVED_UNS, Key.obsm.SPATIAL}
    clashes = [k for k in (key, Key.obsm.uncertainty(key)) if k in reserved]
    if clashes:
        raise ValueError(
            f"key_added={key!r} would replace {clashes}, which spatialdata or sthist keep for themselves; choose "
            "another key_added."
        )
    # An obsm entry that sthist did not write (no provenance in uns) is the user's: never replaced.
    for entry in (key, Key.obsm.uncertainty(key)):
        if entry in table.obsm and not _written_by_sthist(table, key):
            raise ValueError(
                f"table.obsm[{entry!r}] exists and was not written by sthist.tl.predict; it is not replaced "
                "even with overwrite=True. Choose another key_added."
            )


def _written_by_sthist(table, key: str) -> bool:
    record = table.uns.get(key)
    return isinstance(record, dict) and "method" in record and Key.uns.VERSION in record


def check_accelerator(accelerator: str, name: str = "accelerator") -> None:
    """Refuse, before any work, a Lightning accelerator this machine lacks (``'gpu'`` without a GPU)."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"{name}={accelerator!r} asks for a GPU, but torch sees none on this machine; use "
            f"{name}='cpu' (or 'auto')."
        )
    if accelerator == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f"{name}='mps': MPS is not available here; use {name}='cpu'.")


#: Rough memory of one patch in an encoder's forward pass, as a multiple of its float32 input (activations).
ACTIVATION_FACTOR = 20


def available_memory(device: str) -> int | None:
    """Bytes free for a batch on ``device`` (a GPU's free memory, or the system's available memory)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_batch_memory(batch_size: int, patch_size_px: int, device: str, *, views: int = 1) -> None:
    """Refuse, before any work, a batch whose patches cannot fit in memory; name the largest batch that fits.

    A patch costs its float32 input (3 × px² × 4 bytes) times about ``ACTIVATION_FACTOR`` for the encoder's
    activations; views are encoded one batch at a time, so they do not multiply the batch.
    """
    free = available_memory(device)
    per_patch = 3 * patch_size_px**2 * 4 * ACTIVATION_FACTOR
    needed = batch_size * per_patch
    if free is None or needed <= free:
        return
    largest = max(1, free // per_patch)
    raise ValueError(
        f"batch_size={batch_size} needs about {needed / 2**30:,.1f} GiB for its {patch_size_px} px patches and the "
        f"encoder's activations, more than the {free / 2**30:.1f} GiB free on {device}; use batch_size={min(largest, 256)} "
        "or less."
    )


def check_device(device) -> str:
    """The torch device to use, checked before any work.

    ``'auto'`` is a GPU when torch sees one, else the CPU; a device that does not exist here (``'cuda'``
    without a GPU) is refused up front.
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} asks for a GPU, but torch sees none on this machine; use 'cpu'."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} GPU(s).")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available here; use 'cpu'.")
    return str(device)


def boolean_column(table, column: str, *, section: str) -> np.ndarray:
    """The boolean ``obs`` column ``column`` as a numpy array; anything but booleans without gaps is refused.

    Strings ('True'/'False'), categories ('pass'/'fail'), numbers or NaN would each read as "every spot" or
    as something else than meant when cast to bool.
    """
    values = table.obs[column]
    if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
        return values.to_numpy(dtype=bool)
    example = list(pd.unique(values.astype(object)))[:4]
    raise TypeError(
        f"Section {section!r}: obs column {column!r} must hold booleans (True/False) selecting spots, but its "
        f"dtype is {values.dtype} (values such as {example}); convert it, e.g. "
        f"`table.obs[{column!r}] = {_boolean_conversion(values, f'table.obs[{column!r}]')}`."
    )


_TRUE_WORDS = ("true", "pass", "passed", "yes", "keep", "in_tissue", "on", "1")


def _boolean_conversion(values: pd.Series, source: str) -> str:
    """The expression that turns ``values`` into the booleans they stand for, fitted to what they hold."""
    present = values.dropna()
    if pd.api.types.is_bool_dtype(present.dtype) or (
        len(present) and present.map(lambda v: isinstance(v, (bool, np.bool_))).all()
    ):
        return f"{source}.fillna(False).astype(bool)"  # booleans with gaps
    if pd.api.types.is_numeric_dtype(present.dtype):
        if len(present) and set(np.unique(present.to_numpy())) <= {0, 1}:
            gaps = ".fillna(0)" if values.isna().any() else ""
            return f"{source}{gaps} == 1"
        return f"{source}.notna()" if values.isna().any() else f"{source} > 0"
    words = [str(v) for v in pd.unique(present.astype(str))]
    true_like = [w for w in words if w.strip().lower() in _TRUE_WORDS]
    if true_like:
        return f"{source}.astype(str) == {true_like[0]!r}"
    return f"{source} == {words[0]!r}" if words else f"{source}.notna()"


def did_you_mean(missing: Sequence[str], available) -> str:
    """A hint naming available genes that match missing ones when case is ignored (e.g. ``Erbb2`` → ``ERBB2``)."""
    by_upper: dict[str, str] = {}
    for name in available:
        by_upper.setdefault(str(name).upper(), str(name))
    matches = {g: by_upper[g.upper()] for g in missing if g.upper() in by_upper}
    if not matches:
        return ""
    shown = ", ".join(f"{g!r} → {m!r}" for g, m in list(matches.items())[:5])
    return f" Did you mean {shown}? (gene names are case-sensitive)"
