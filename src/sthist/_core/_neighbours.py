"""Spatial neighbourhoods of spots: means over the spots within a radius (µm), per section."""

from __future__ import annotations

import numpy as np


def neighbour_weights(centres_um: np.ndarray, radius_um: float):
    """Row-normalised sparse matrix averaging each spot with the spots whose centres lie within ``radius_um``.

    Each spot counts itself, so a spot without neighbours keeps its own value.
    """
    from scipy import sparse
    from scipy.spatial import cKDTree

    n = len(centres_um)
    pairs = cKDTree(centres_um).query_pairs(radius_um, output_type="ndarray").reshape(-1, 2)
    rows = np.r_[np.arange(n), pairs[:, 0], pairs[:, 1]]
    cols = np.r_[np.arange(n), pairs[:, 1], pairs[:, 0]]
    adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency


def neighbour_mean(
    values: np.ndarray, centres_um: np.ndarray, radius_um: float, groups: np.ndarray | None = None
) -> np.ndarray:
    """Mean of each row of ``values`` (spots × features) over the rows within ``radius_um`` of it (itself included).

    ``groups`` (one label per row, e.g. the section) keeps neighbourhoods inside a group: spots of different
    sections are never neighbours, whatever their coordinates.
    """
    values = np.asarray(values)
    centres_um = np.asarray(centres_um, dtype=np.float64)
    if len(values) != len(centres_um):
        raise ValueError(f"{len(values)} rows of values but {len(centres_um)} centres.")
    out = np.empty(values.shape, dtype=np.result_type(values.dtype, np.float32))
    labels = np.zeros(len(values), dtype=np.int64) if groups is None else np.asarray(groups)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        weights = neighbour_weights(centres_um[rows], radius_um)
        out[rows] = weights @ values[rows].astype(np.float64)
    return out
