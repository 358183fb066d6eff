"""Expression normalisation: counts per spot scaled to a common total, then log1p, into a named layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from sthist._constants import Key
from sthist._core._counts import check_raw_counts
from sthist._logging import logger

if TYPE_CHECKING:
    import anndata as ad


def normalize(
    adata: ad.AnnData,
    *,
    target_sum: float = 1e4,
    layer: str | None = None,
    key_added: str = Key.layers.NORMALIZED,
    inplace: bool = True,
    overwrite: bool = False,
):
    """Normalise raw counts to ``target_sum`` per spot and take log1p.

    Spots with zero counts stay zero. The raw counts are left as they are.

    Parameters
    ----------
    adata
        Table of spots × genes (for a SpatialData object: ``sdata.tables['table']``).
    target_sum
        Total counts per spot after scaling (1e4: log1p of counts per 10,000).
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    key_added
        Layer to write; its settings go to ``adata.uns``, entry ``sthist_normalization``, key ``key_added``.
    inplace
        Write into ``adata`` and return ``None``; otherwise return the normalised matrix.
    overwrite
        Replace the layer if it exists (refused otherwise).

    Returns
    -------
    ``None`` with ``inplace=True``; writes ``adata.layers[key_added]`` (float32, sparse CSR when the counts
    are sparse) and ``adata.uns``, entry ``sthist_normalization``, key ``key_added`` (method, target_sum, counts, units).
    With ``inplace=False``, the normalised matrix.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import sthist
    >>> adata = ad.AnnData(np.array([[1, 3], [0, 0]], dtype=np.float32))
    >>> sthist.pp.normalize(adata, target_sum=4)
    >>> adata.layers["sthist_log1p"].astype(float).round(3).tolist()
    [[0.693, 1.386], [0.0, 0.0]]
    """
    if not np.isfinite(target_sum) or target_sum <= 0:
        raise ValueError(f"target_sum must be a positive number, got {target_sum!r}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"No layer {layer!r}; available layers: {sorted(adata.layers.keys())}.")
    if inplace and key_added in adata.layers and not overwrite:
        raise ValueError(f"Layer {key_added!r} exists already; pass overwrite=True to replace it.")
    counts = adata.X if layer is None else adata.layers[layer]
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if counts is None:
        raise ValueError(f"{where} is empty; the table holds no counts.")
    check_raw_counts(counts, where=where)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    factors = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    if sparse.issparse(counts):
        normalised = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
        normalised.data *= np.repeat(factors, np.diff(normalised.indptr)).astype(np.float32)
        np.log1p(normalised.data, out=normalised.data)
    else:
        normalised = np.log1p(np.asarray(counts, dtype=np.float64) * factors[:, None]).astype(np.float32)
    if not inplace:
        return normalised
    adata.layers[key_added] = normalised
    adata.uns.setdefault(Key.uns.NORMALIZATION, {})[key_added] = {
        "method": "normalize_total+log1p",
        "target_sum": float(target_sum),
        "counts": where,
        "units": f"log1p(counts per {target_sum:g})",
    }
    logger.info("added adata.layers[%r] (log1p of counts per %g)", key_added, target_sum)
    return None
