"""Checks of expression matrices."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def _values(matrix) -> np.ndarray:
    return matrix.data if sparse.issparse(matrix) else np.asarray(matrix)


def check_raw_counts(matrix, *, where: str) -> None:
    """Refuse matrices that are not raw counts: NaN/inf, negative or non-integer entries."""
    values = _values(matrix)
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{where} is not numeric (dtype {values.dtype}).")
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ValueError(f"{where} contains NaN or infinite values; raw counts are expected.")
        if (values != np.round(values)).any():
            raise ValueError(
                f"{where} has non-integer values; raw counts are expected (is it normalised already? "
                "Point `layer=` to the raw counts)."
            )
    if (values < 0).any():
        raise ValueError(f"{where} has negative values; raw counts are expected.")


def check_finite(matrix, *, where: str) -> None:
    values = _values(matrix)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values.")
