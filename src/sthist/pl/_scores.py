"""Plots of scores: per-gene accuracy, gene–gene correlation structure, cross-validation and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import Key
from sthist._core._config import METHOD_NAMES
from sthist._core._docs import doc_params
from sthist._core._elements import as_table
from sthist.pl._tissue import axes_grid, finish, prediction_frame

#: Axis names of the summary columns of evaluate and cross_validate.
METRIC_LABELS = {
    "pearson_mean": "mean Pearson r",
    "pearson_median": "median Pearson r",
    "spearman_mean": "mean Spearman ρ",
    "mse_mean": "mean squared error",
}

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

# Colours of the gene sets (colour-blind safe, Okabe–Ito).
SET_COLOURS = {"HEG": "#E69F00", "HVG": "#0072B2", "MG": "#D55E00"}


@doc_params
def gene_scores(
    evaluation,
    *,
    key: str = Key.obsm.PREDICTION,
    n_labels: int = 5,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Per-gene Pearson r between observed and predicted expression, genes ranked, gene sets highlighted.

    Every gene of the panel is a grey dot at its rank; genes among the highly expressed (HEG@n), highly
    variable (HVG@n) and marker genes (MG) are coloured, and the legend gives each set's mean r. Marker genes
    and the ``n_labels`` best-predicted genes are named. Genes with undefined r (constant) are counted in the
    title, not drawn.

    Parameters
    ----------
    evaluation
        The dict returned by :func:`sthist.tl.evaluate`, its per-gene DataFrame, or a SpatialData/AnnData
        whose table holds the evaluation in ``uns[key + '_evaluation']``.
    key
        Prediction key whose evaluation to read when ``evaluation`` is a SpatialData/AnnData.
    n_labels
        How many of the best-predicted genes to name.
    title
        Axes title (default: how many genes have an undefined r).
    {plot_ax}
    {plot_output}

    Returns
    -------
    The matplotlib Axes (``None`` with ``show=True``).

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> import sthist
    >>> sthist.tl.predict(sections["toy1"], model)
    >>> sthist.pp.normalize(sections["toy1"].tables["table"])
    >>> sthist.tl.evaluate(sections["toy1"], n_top=5)
    >>> ax = sthist.pl.gene_scores(sections["toy1"])
    >>> 0 < len(ax.collections[0].get_offsets()) <= len(model.genes)  # one dot per gene with a defined r
    True
    """
    genes = _per_gene_table(evaluation, key)
    ranked = genes.dropna(subset=["pearson"]).sort_values("pearson", ascending=False)
    n_nan = len(genes) - len(ranked)
    rank = pd.Series(np.arange(1, len(ranked) + 1), index=ranked.index)
    figure, axes = axes_grid(ax, 1, 1, (7.5, 4.2), what="panel")
    ax = axes[0, 0]
    ax.scatter(rank, ranked["pearson"], s=9, color="0.72", linewidths=0, label=f"all ({len(genes)} genes)")
    set_columns = [c for c in genes.columns if c.startswith("in_")]
    for offset, column in enumerate(set_columns):
        name = column.removeprefix("in_")
        members = ranked.index[ranked[column].astype(bool)]
        colour = SET_COLOURS.get(name.split("@")[0], f"C{offset}")
        mean = genes.loc[genes[column].astype(bool), "pearson"].mean()
        marker = "*" if name == "MG" else "o"
        ax.scatter(
            rank[members], ranked.loc[members, "pearson"], s=60 if marker == "*" else 22, marker=marker,
            facecolors="none" if name.startswith("HVG") else colour, edgecolors=colour,
            linewidths=1.1, label=f"{name} (mean r = {mean:.3f})", zorder=3,
        )  # fmt: skip
    ax.axhline(0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_xlabel("genes ranked by Pearson r")
    ax.set_ylabel("Pearson r, observed vs predicted\n(across spots)")
    ax.set_xlim(0, len(ranked) + 1)
    ax.autoscale_view()
    labelled = list(ranked.index[:n_labels])
    if "in_MG" in ranked:
        labelled += [g for g in ranked.index[ranked["in_MG"].astype(bool)] if g not in labelled]
    _label_points(ax, [(gene, rank[gene], ranked.loc[gene, "pearson"]) for gene in labelled])
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    suffix = f"; {n_nan} genes constant, r undefined" if n_nan else ""
    ax.set_title(title or f"Per-gene accuracy{suffix}")
    return finish(figure, ax, title=None, save=save, show=show)


@doc_params
def gene_correlation(
    sdata: SpatialData | AnnData,
    *,
    genes: Sequence[str] | None = None,
    n_genes: int = 30,
    key: str = Key.obsm.PREDICTION,
    layer: str | None = Key.layers.NORMALIZED,
    cmap: str = "RdBu_r",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
    table_key: str | None = None,
) -> Figure | None:
    """Gene–gene correlation across spots, observed beside predicted, in the same (clustered) gene order.

    A model that learned tissue programmes reproduces the observed blocks of co-expressed genes; one that
    regresses to the mean shows flat or uniformly high correlations. The title gives the gene–gene fidelity
    (Pearson r between the two matrices' upper triangles) over the genes shown. Genes are ordered by
    average-linkage clustering of the observed matrix; both panels share one colour scale from -1 to 1.

    Parameters
    ----------
    sdata
        SpatialData with one table (or the AnnData table) holding observed expression and predictions.
    genes
        Genes to show; by default the ``n_genes`` predicted genes with the highest observed variance.
    n_genes
        Number of genes shown when ``genes`` is not given.
    {key}
    layer
        Layer with observed expression in the prediction's units (``None``: ``X``).
    cmap
        Diverging colour map of the correlations.
    title
        Figure title (default: the gene–gene fidelity).
    {table_key}
    {plot_ax}
    {plot_output}

    Returns
    -------
    The matplotlib Figure (``None`` with ``show=True``).

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> import sthist
    >>> sthist.tl.predict(sections["toy1"], model)
    >>> sthist.pp.normalize(sections["toy1"].tables["table"])
    >>> figure = sthist.pl.gene_correlation(sections["toy1"], n_genes=8)
    >>> figure.axes[0].get_title()
    'observed gene–gene correlation'
    """
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    from sthist.tl import gene_gene_fidelity

    table = as_table(sdata, table_key, obsm_key=key)
    prediction_frame(table, key, [])  # checks that predictions are there
    chosen = list(genes) if genes is not None else None
    predicted = prediction_frame(table, key, chosen or list(table.obsm[key].columns)).dropna()
    if layer is not None and layer not in table.layers:
        raise KeyError(f"No layer {layer!r} with observed expression; pass layer= (None for X).")
    unmeasured = [g for g in predicted.columns if g not in table.var_names]
    if unmeasured:
        raise KeyError(f"Genes {unmeasured[:10]} are predicted but not measured in this table.")
    observed = table[predicted.index, list(predicted.columns)].to_df(layer=layer)
    if chosen is None:
        chosen = list(observed.var().sort_values(ascending=False).index[:n_genes])
    if len(chosen) < 3:
        raise ValueError(f"Give at least 3 genes to correlate; got {len(chosen)}.")
    observed, predicted = observed[chosen], predicted[chosen]
    with np.errstate(invalid="ignore", divide="ignore"):
        observed_corr = np.corrcoef(observed.to_numpy(dtype=float), rowvar=False)
        predicted_corr = np.corrcoef(predicted.to_numpy(dtype=float), rowvar=False)
    distance = np.nan_to_num(1 - observed_corr, nan=1.0)
    np.fill_diagonal(distance, 0)
    order = hierarchy.leaves_list(hierarchy.linkage(squareform(distance, checks=False), "average"))
    names = [chosen[i] for i in order]
    fidelity = gene_gene_fidelity(observed, predicted)
    size = min(4.0 + 0.16 * len(names), 11.0)
    figure, axes = axes_grid(ax, 1, 2, (2 * size + 1.2, size), what="matrix")
    axes = list(axes[0])
    for panel, (label, matrix) in zip(
        axes, [("observed", observed_corr), ("predicted", predicted_corr)], strict=True
    ):
        image = panel.imshow(
            matrix[np.ix_(order, order)], cmap=cmap, vmin=-1, vmax=1, interpolation="nearest"
        )
        font = max(4, min(9, 360 / len(names)))
        panel.set_xticks(range(len(names)), names, rotation=90, fontsize=font)
        panel.set_yticks(range(len(names)), names, fontsize=font)
        panel.set_title(f"{label} gene–gene correlation")
    figure.colorbar(image, ax=axes, shrink=0.7, label="Pearson r across spots")
    title = title or f"Gene–gene fidelity r = {fidelity:.3f} over {len(names)} genes"
    return finish(figure, figure, title=title, save=save, show=show)


@doc_params
def cross_validation(
    results: pd.DataFrame,
    *,
    metric: str = "pearson_mean",
    gene_sets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure | None:
    """Cross-validation results by method: each held-out section a dot, the mean a bar, one panel per gene set.

    Parameters
    ----------
    results
        The DataFrame returned by :func:`sthist.tl.cross_validate` (or read back from its CSV).
    metric
        Column to plot, e.g. ``'pearson_mean'``, ``'pearson_median'``, ``'spearman_mean'``, ``'mse_mean'``
        or ``'gene_gene_fidelity'``.
    gene_sets
        Gene sets to show, one panel each (default: every set except ``'panel'``).
    methods
        Methods in the order to show them (default: CMRCNet first, then the baselines present).
    title
        Figure title.
    ax
        An Axes (one gene set) or a sequence of Axes (one per gene set); a new figure otherwise.
    {plot_output}

    Returns
    -------
    The matplotlib Figure (``None`` with ``show=True``).

    Examples
    --------
    >>> import sthist
    >>> results = sthist.tl.cross_validate(
    ...     sthist.datasets.toy(3), groups="section", methods=["bleep", "ridge"], n_top=5,
    ...     fit_options={"backbone": "tiny", "patch_size_um": 64, "k": 5, "max_epochs": 1, "training": {"views": 1}},
    ... )
    >>> figure = sthist.pl.cross_validation(results)
    >>> [ax.get_title() for ax in figure.axes]
    ['HEG@5', 'HVG@5']
    """
    required = {"method", "gene_set", "section", metric}
    missing = required - set(results.columns)
    if missing:
        raise KeyError(
            f"results lack columns {sorted(missing)}; pass the DataFrame from sthist.tl.cross_validate "
            f"(metric={metric!r} must be one of its columns)."
        )
    present_sets = list(dict.fromkeys(results["gene_set"]))
    gene_sets = (
        [s for s in present_sets if s not in ("panel", "all")] if gene_sets is None else list(gene_sets)
    )
    unknown = [s for s in gene_sets if s not in present_sets]
    if unknown or not gene_sets:
        raise KeyError(f"Gene sets {unknown or gene_sets} are not in the results; they have {present_sets}.")
    present_methods = list(dict.fromkeys(results["method"]))
    if methods is None:
        methods = [m for m in METHOD_NAMES if m in present_methods]
        methods += [m for m in present_methods if m not in methods]
    else:
        methods = list(methods)
        absent = [m for m in methods if m not in present_methods]
        if absent:
            raise KeyError(f"Methods {absent} are not in the results; they have {present_methods}.")
    width = 1.2 + 0.9 * len(methods) * len(gene_sets) + 1.0 * len(gene_sets)
    figure, axes = axes_grid(ax, 1, len(gene_sets), (width, 4), what="gene set", sharey=True)
    axes = list(axes[0])
    sections = list(dict.fromkeys(results["section"]))
    rng = np.random.default_rng(0)
    for panel, gene_set in zip(axes, gene_sets, strict=True):
        subset = results[results["gene_set"] == gene_set]
        for position, method in enumerate(methods):
            values = subset.loc[subset["method"] == method, metric].to_numpy(dtype=float)
            colour = f"C{position}"
            mean = np.nanmean(values) if np.isfinite(values).any() else np.nan
            panel.bar(position, mean, width=0.65, color=colour, alpha=0.35, edgecolor=colour)
            jitter = rng.uniform(-0.18, 0.18, len(values))
            panel.scatter(position + jitter, values, s=16, color=colour, zorder=3, linewidths=0)
            if np.isfinite(mean):
                panel.text(position, mean, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
        panel.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        panel.axhline(0, color="0.3", linewidth=0.8)
        panel.set_title(gene_set)
    label = METRIC_LABELS.get(metric, metric)
    axes[0].set_ylabel(f"{label} per held-out section\n(bar: mean over {len(sections)} sections)")
    return finish(figure, figure, title=title, save=save, show=show)


@doc_params
def training_curves(
    models,
    *,
    components: Sequence[str] | None = None,
    log_scale: bool = True,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure | None:
    """Training losses per epoch, one panel per loss component (total, contrastive, reconstruction, decoder, mse).

    Parameters
    ----------
    models
        A fitted :class:`sthist.models.SthistModel`, its ``history`` (list of per-epoch dicts), or a dict of
        label → model/history to compare (e.g. ``{'cmrcnet': m1, 'bleep': m2}``).
    components
        Loss components to draw (default: all recorded, the total ``'loss'`` first).
    ax
        An Axes (one component) or a sequence of Axes (one per component); a new figure otherwise.
    log_scale
        Logarithmic loss axis where a component's losses span more than a decade.
    title
        Figure title.
    {plot_output}

    Returns
    -------
    The matplotlib Figure (``None`` with ``show=True``).

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> import sthist
    >>> figure = sthist.pl.training_curves(model)
    >>> [ax.get_title() for ax in figure.axes]
    ['loss', 'contrastive', 'reconstruction', 'decoder']
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    histories = _histories(models)
    recorded = list(
        dict.fromkeys(name for h in histories.values() for r in h for name in r if name != "epoch")
    )
    if components is None:
        components = sorted(recorded, key=lambda name: (name != "loss", recorded.index(name)))
    else:
        components = list(components)
        absent = [c for c in components if c not in recorded]
        if absent:
            raise KeyError(f"Loss components {absent} were not recorded; recorded: {recorded}.")
    figure, axes = axes_grid(ax, 1, len(components), (3.8 * len(components) + 0.6, 3.6), what="component")
    axes = list(axes[0])
    for panel, component in zip(axes, components, strict=True):
        for position, (label, history) in enumerate(histories.items()):
            epochs = [r["epoch"] + 1 for r in history if component in r]
            values = [r[component] for r in history if component in r]
            if values:
                panel.plot(epochs, values, marker="o", markersize=2.5, color=f"C{position}", label=label)
        panel.set_xlabel("epoch")
        panel.set_ylabel(f"{component} (mean over batches)")
        panel.set_title(component)
        values = [r[component] for h in histories.values() for r in h if component in r]
        # Log scale only where the losses span a decade; narrower ranges read better on a linear axis.
        if log_scale and values and min(values) > 0 and max(values) / min(values) > 10:
            panel.set_yscale("log")
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            panel.yaxis.set_major_formatter(plain)
            panel.yaxis.set_minor_formatter(plain)
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(histories) > 1:
            panel.legend(fontsize=8, frameon=False)
    return finish(figure, figure, title=title, save=save, show=show)


def _label_points(ax, points: list[tuple[str, float, float]], fontsize: float = 7) -> None:
    """Name points, moving each label down (with a leader line) until it overlaps no label placed before."""
    to_points = ax.figure.dpi / 72
    placed: list[tuple[float, float, float, float]] = []  # label boxes in display pixels
    for name, x, y in sorted(points, key=lambda p: (p[1], -p[2])):
        px, py = ax.transData.transform((x, y))
        width, height = 0.62 * fontsize * len(name) * to_points, 1.25 * fontsize * to_points
        dx, dy = 4 * to_points, 3 * to_points
        for _ in range(40):
            box = (px + dx, py + dy, px + dx + width, py + dy + height)
            if not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed):
                break
            dy -= height
        placed.append(box)
        moved = dy < 3 * to_points
        ax.annotate(
            name, (x, y), xytext=(dx / to_points, dy / to_points), textcoords="offset points", fontsize=fontsize,
            zorder=4, arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5} if moved else None,
        )  # fmt: skip


def _histories(models) -> dict[str, list[dict]]:
    from sthist.models import SthistModel

    def one(value, label):
        if isinstance(value, SthistModel):
            if not value.history:
                raise ValueError(
                    f"Model {label!r} ({value.method}) has no training history: ridge is solved in closed "
                    "form, and models saved before history was recorded have none."
                )
            return value.history
        if isinstance(value, list) and value and all(isinstance(r, Mapping) and "epoch" in r for r in value):
            return value
        raise TypeError(
            f"{label!r} must be a fitted SthistModel or its history (list of per-epoch dicts with 'epoch'), "
            f"got {type(value).__name__}."
        )

    if isinstance(models, Mapping):
        if not models:
            raise ValueError("Give at least one model.")
        return {str(label): one(value, label) for label, value in models.items()}
    label = models.method if isinstance(models, SthistModel) else "model"
    return {label: one(models, label)}


def _per_gene_table(evaluation, key: str) -> pd.DataFrame:
    if isinstance(evaluation, pd.DataFrame):
        genes = evaluation
    elif isinstance(evaluation, Mapping) and "genes" in evaluation:
        genes = evaluation["genes"]
    else:
        table = as_table(evaluation, uns_key=Key.uns.evaluation(key))
        stored = table.uns.get(Key.uns.evaluation(key))
        if stored is None:
            raise KeyError(
                f"No evaluation under table.uns[{Key.uns.evaluation(key)!r}]; run `sthist.tl.evaluate(sdata)` first "
                "or pass its result."
            )
        genes = stored["genes"]
    if not isinstance(genes, pd.DataFrame) or "pearson" not in genes:
        raise TypeError(
            "The per-gene evaluation must be a DataFrame with a 'pearson' column (tl.evaluate's)."
        )
    if genes.empty:
        raise ValueError("The evaluation has no genes.")
    return genes
