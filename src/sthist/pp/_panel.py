"""Gene panels across sections: intersection, detection filter, HEG / HVG / explicit list."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from sthist._constants import Key
from sthist._core._checks import did_you_mean, gene_list
from sthist._core._config import is_positive_integer
from sthist._core._elements import as_table
from sthist._logging import logger

if TYPE_CHECKING:
    import anndata as ad
    from spatialdata import SpatialData


def _tables(sections) -> dict[str, ad.AnnData]:
    import anndata as ad

    if isinstance(sections, Mapping):
        items = list(sections.items())
    elif isinstance(sections, ad.AnnData) or hasattr(sections, "tables"):
        items = [("section 0", sections)]
    elif isinstance(sections, Sequence):
        items = [(f"section {i}", s) for i, s in enumerate(sections)]
    else:
        raise TypeError(
            f"Expected AnnData or SpatialData objects (or a list/dict of them), got {type(sections)}."
        )
    if not items:
        raise ValueError("No sections given.")
    tables = {}
    for name, item in items:
        try:
            tables[name] = as_table(item)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name}: {error}") from None
        if tables[name].n_obs == 0:
            raise ValueError(f"{name} has no spots.")
    return tables


#: Gene-name patterns of technical genes (human and mouse spelling): mitochondrially encoded genes,
#: ribosomal proteins, and the nuclear-retained lncRNAs MALAT1 and NEAT1 that dominate the top of many
#: spot-level expression rankings without telling tissue apart.
TECHNICAL_PATTERNS = {
    "mitochondrial": r"^(MT|mt|Mt)-",
    "ribosomal protein": r"^(RP[SL]\d|RP[SL]P\d|RPSA$|Rp[sl]\d|Rp[sl]p\d|Rpsa$)",
    "nuclear lncRNA": r"^(MALAT1|NEAT1|Malat1|Neat1)$",
}


def technical_genes(genes: Sequence[str]) -> list[str]:
    """The technical genes among ``genes``: mitochondrial, ribosomal-protein, MALAT1/NEAT1.

    Matched by name (:data:`TECHNICAL_PATTERNS`, human and mouse spelling); used by
    ``select_genes(exclude_technical=True)`` and ``tl.fit(exclude_technical=True)``.

    Parameters
    ----------
    genes
        Gene names (e.g. ``adata.var_names``).

    Returns
    -------
    The technical genes, in the order given.

    Examples
    --------
    >>> import sthist
    >>> sthist.pp.technical_genes(["MT-CO1", "RPL13A", "Malat1", "ERBB2", "Rps6", "MTOR"])
    ['MT-CO1', 'RPL13A', 'Malat1', 'Rps6']
    """
    pattern = re.compile("|".join(f"(?:{p})" for p in TECHNICAL_PATTERNS.values()))
    return [str(g) for g in genes if pattern.match(str(g))]


def _column_stats(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-gene mean, variance and detection fraction (> 0) of a spots × genes matrix."""
    n = matrix.shape[0]
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        mean = np.asarray(matrix.mean(axis=0)).ravel()
        mean_sq = np.asarray(matrix.multiply(matrix).mean(axis=0)).ravel()
        detected = np.asarray((matrix > 0).sum(axis=0)).ravel() / n
    else:
        matrix = np.asarray(matrix, dtype=np.float64)
        mean, mean_sq = matrix.mean(axis=0), (matrix**2).mean(axis=0)
        detected = (matrix > 0).mean(axis=0)
    variance = np.maximum(mean_sq - mean**2, 0) * n / max(n - 1, 1)
    return mean, variance, detected


def select_genes(
    sections: SpatialData | ad.AnnData | Sequence | Mapping,
    *,
    flavor: Literal["heg", "hvg", "heg+hvg"] = "heg",
    n_top: int | None = 250,
    genes: Sequence[str] | None = None,
    min_detection: float = 0.1,
    layer: str = Key.layers.NORMALIZED,
    exclude_technical: bool = False,
) -> list[str]:
    """Choose a gene panel shared by several sections.

    Only genes measured in every section are considered (their intersection). A gene is kept when it is
    detected (count > 0) in at least ``min_detection`` of the spots of every section. Genes are then ranked
    by their mean over sections of the per-section mean (``"heg"``, highly expressed genes) or variance
    (``"hvg"``, highly variable genes) of the log-normalised expression; averaging per section keeps
    differences in sequencing depth between sections from counting as variability.

    Parameters
    ----------
    sections
        One or several sections: AnnData tables, SpatialData objects with one table, or a dict of them.
    flavor
        ``"heg"`` (top by mean expression), ``"hvg"`` (top by variance), or ``"heg+hvg"``: the top
        ``n_top`` HEG followed by those of the top ``n_top`` HVG not among them (``tl.fit``'s default panel).
    n_top
        Number of genes (of each ranking for ``"heg+hvg"``); ``None`` keeps all genes that pass the filters.
    genes
        An explicit panel instead of a ranking: every gene must be present in every section.
    min_detection
        Minimum fraction of spots (0-1) in which a gene is detected, in every section.
    layer
        Layer of log-normalised expression (written by :func:`sthist.pp.normalize`).
    exclude_technical
        Leave technical genes (:func:`sthist.pp.technical_genes`: mitochondrial, ribosomal-protein,
        MALAT1/NEAT1) out of a ranked panel. An explicit ``genes`` list is kept as given.

    Returns
    -------
    Gene names, best first (or in the given order for an explicit list).

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.toy()
    >>> for sdata in sections.values():
    ...     sthist.pp.normalize(sdata.tables["table"])
    >>> panel = sthist.pp.select_genes(sections, flavor="hvg", n_top=5)
    >>> len(panel)
    5
    """
    tables = _tables(sections)
    for name, table in tables.items():
        if not table.var_names.is_unique:
            duplicated = table.var_names[table.var_names.duplicated()].unique().tolist()
            raise ValueError(
                f"Gene names (var_names) of {name} are not unique (e.g. {duplicated[:5]}); call "
                "`adata.var_names_make_unique()` first."
            )
    if genes is not None:
        panel: list[str] = gene_list(genes) or []
        for name, table in tables.items():
            missing = [g for g in panel if g not in table.var_names]
            if missing:
                raise KeyError(
                    f"{len(missing)} requested genes are not measured in {name}: {missing[:10]}"
                    f"{' ...' if len(missing) > 10 else ''}." + did_you_mean(missing, table.var_names)
                )
        return panel
    if flavor == "heg+hvg":
        heg, hvg = (
            select_genes(
                sections,
                flavor=ranking,
                n_top=n_top,
                min_detection=min_detection,
                layer=layer,
                exclude_technical=exclude_technical,
            )
            for ranking in ("heg", "hvg")
        )
        chosen = set(heg)
        return heg + [g for g in hvg if g not in chosen]
    if flavor not in ("heg", "hvg"):
        raise ValueError(f"flavor must be 'heg', 'hvg' or 'heg+hvg', got {flavor!r}.")
    if n_top is not None and not is_positive_integer(n_top):
        raise ValueError(f"n_top must be a positive integer or None, got {n_top!r}.")
    if not 0 <= min_detection <= 1:
        raise ValueError(f"min_detection must lie in [0, 1], got {min_detection!r}.")
    shared = None
    for table in tables.values():
        shared = table.var_names if shared is None else shared.intersection(table.var_names, sort=False)
    if shared is None or len(shared) == 0:
        raise ValueError("The sections share no gene.")
    if exclude_technical:
        technical = technical_genes(shared)
        if technical:
            logger.info("left %d technical genes out of the panel (e.g. %s)", len(technical), technical[:3])
            shared = shared.difference(technical, sort=False)
        if len(shared) == 0:
            raise ValueError("Every shared gene is technical; set exclude_technical=False.")
    scores: list[np.ndarray] = []
    passes = np.ones(len(shared), dtype=np.bool_)
    for name, table in tables.items():
        if layer not in table.layers:
            raise KeyError(
                f"{name} has no layer {layer!r}; run `sthist.pp.normalize(adata)` first or pass layer=."
            )
        # Statistics of every gene, then the shared ones: cheaper than cutting columns out of a sparse matrix,
        # and the same numbers (each gene's are computed from its own column alone).
        columns = table.var_names.get_indexer(shared)
        mean, variance, detected = (stat[columns] for stat in _column_stats(table.layers[layer]))
        passes = passes & (detected >= min_detection)
        scores.append(mean if flavor == "heg" else variance)
    score = pd.Series(np.mean(scores, axis=0), index=shared)[passes]
    if score.empty:
        raise ValueError(
            f"No gene is detected in at least {min_detection:.0%} of the spots of every section."
        )
    ranked = score.sort_values(ascending=False, kind="stable")
    if n_top is not None:
        if len(ranked) < n_top:
            logger.warning("only %d genes pass the filters; fewer than n_top=%d", len(ranked), n_top)
        ranked = ranked.iloc[:n_top]
    logger.info(
        "gene panel: %d %s genes from %d shared genes over %d sections",
        len(ranked),
        flavor.upper(),
        len(shared),
        len(tables),
    )
    return ranked.index.tolist()
