"""Expression on tissue: spots coloured by observed, predicted and uncertain expression over the H&E image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._docs import doc_params
from sthist._logging import logger
from sthist.pl._tissue import (
    axes_grid,
    draw_spots,
    finish,
    gene_list,
    panel_height,
    prediction_frame,
    provenance,
    robust_limits,
    tissue_view,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@doc_params
def expression(
    sdata: SpatialData,
    genes: Sequence[str],
    *,
    key: str = Key.obsm.PREDICTION,
    layer: str | None = Key.layers.NORMALIZED,
    max_image_pixels: int = 1500,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
) -> Figure | None:
    """Plot expression of ``genes`` at the spots over the H&E image: observed beside predicted.

    Each gene gets a row: observed (from ``layer``; left out when ``None`` or when the section does not measure
    the genes, e.g. an H&E-only section) and predicted
    (``table.obsm[key]``) share one colour scale (2nd-98th percentile of both) and one colour bar. Titles
    carry the gene and the Pearson r across spots. Spots are drawn at their true size; spots without a
    prediction (failed QC) are left uncoloured. The image is drawn from the pyramid level whose longer side
    is closest to ``max_image_pixels``; a scale bar gives the physical size when the section's scale is known.

    Parameters
    ----------
    sdata
        Section with the H&E image, the spots and a table holding ``obsm[key]``.
    genes
        One gene or several (one row each).
    {key}
    layer
        Layer of observed expression (log1p units) drawn beside the prediction; ``None`` shows the
        prediction alone.
    max_image_pixels
        Longer side (px) of the pyramid level drawn under the spots.
    cmap
        Colour map of expression.
    vmin, vmax
        Limits of the colour scale (log1p units), the same for every gene; by default each gene's 2nd and
        98th percentiles over observed and predicted values.
    title
        Figure title.
    {image_key}
    {table_key}
    {coordinate_system}
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
    >>> figure = sthist.pl.expression(sections["toy1"], model.genes[:2])
    >>> len(figure.axes)  # two rows of observed and predicted, one colour bar per row
    6
    """
    from sthist._core._metrics import gene_pearson

    genes, view, predicted = _predictions_on_tissue(
        sdata, genes, key, max_image_pixels, image_key, table_key, coordinate_system
    )
    table = view.table
    observed = None
    measured = all(g in table.var_names for g in genes)
    if layer is not None and measured:
        if layer not in table.layers:
            raise KeyError(
                f"No layer {layer!r} with observed expression; run `sthist.pp.normalize(table)` first, or pass "
                "layer=None to draw the predictions alone."
            )
        observed = table[:, genes].to_df(layer=layer)
    elif layer is not None:
        logger.info("the section does not measure %s: drawing the predictions alone", genes)
    units = provenance(table, key).get("units", "log1p normalised")
    columns = 1 if observed is None else 2
    figure, axes = axes_grid(
        ax, len(genes), columns, (4.6 * columns + 1.2, panel_height(view, 4.6) * len(genes)), what="panel"
    )
    for row, gene in enumerate(genes):
        values = {"predicted": predicted[gene].to_numpy(dtype=float)}
        if observed is not None:
            values = {"observed": observed[gene].to_numpy(dtype=float), **values}
        low, high = robust_limits(*values.values())
        low, high = (low if vmin is None else vmin), (high if vmax is None else vmax)
        r = None
        if observed is not None:
            mask = np.isfinite(values["predicted"])
            r = gene_pearson(
                pd.DataFrame({gene: values["observed"][mask]}),
                pd.DataFrame({gene: values["predicted"][mask]}),
            ).iloc[0]
        for column, (label, value) in enumerate(values.items()):
            ax = axes[row, column]
            points = draw_spots(ax, view, value, cmap=cmap, vmin=low, vmax=high)
            suffix = f" (r = {r:.2f})" if (label == "predicted" and r is not None) else ""
            ax.set_title(f"{gene}: {label}{suffix}")
        figure.colorbar(points, ax=axes[row, :].tolist(), shrink=0.8, label=f"{gene} ({units})")
    return finish(figure, figure, title=title, save=save, show=show)


@doc_params
def uncertainty(
    sdata: SpatialData,
    genes: Sequence[str],
    *,
    key: str = Key.obsm.PREDICTION,
    max_image_pixels: int = 1500,
    cmap: str = "viridis",
    uncertainty_cmap: str = "magma",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
) -> Figure | None:
    """Plot the prediction of ``genes`` beside its uncertainty, over the H&E image.

    The uncertainty is the spread (standard deviation) of the expression of the ``k`` retrieved reference
    spots, in the prediction's units (``table.obsm[key + '_uncertainty']``, written by
    :func:`sthist.tl.predict` for retrieval methods). High spread means the image matched reference spots
    that disagree: read the prediction there with care. Each panel has its own colour bar; genes the model
    flagged as unreliable in cross-validation are marked in the title.

    Parameters
    ----------
    sdata
        Section with the H&E image, the spots and a table holding ``obsm[key]`` and
        ``obsm[key + '_uncertainty']``.
    genes
        One gene or several (one row each).
    {key}
    max_image_pixels
        Longer side (px) of the pyramid level drawn under the spots.
    cmap, uncertainty_cmap
        Colour maps of the prediction and of its spread.
    title
        Figure title.
    {image_key}
    {table_key}
    {coordinate_system}
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
    >>> figure = sthist.pl.uncertainty(sections["toy1"], model.genes[0])
    >>> [ax.get_title() for ax in figure.axes[:2]] == [
    ...     f"{model.genes[0]}: predicted", f"{model.genes[0]}: uncertainty (spread)"
    ... ]
    True
    """
    genes, view, predicted = _predictions_on_tissue(
        sdata, genes, key, max_image_pixels, image_key, table_key, coordinate_system
    )
    table = view.table
    spread_key = Key.obsm.uncertainty(key)
    if spread_key not in table.obsm:
        raise KeyError(f"No uncertainty under table.obsm[{spread_key!r}]; run `sthist.tl.predict` first.")
    spread = prediction_frame(table, spread_key, list(genes))
    if spread.isna().all().all():
        method = provenance(table, key).get("method", "this model")
        raise ValueError(
            f"The predictions under {key!r} ({method}) carry no uncertainty: only the retrieval methods "
            "(cmrcnet, bleep) estimate it from the spread of the retrieved spots (not CMRCNet's decoder alone, "
            "retrieval_weight=0)."
        )
    unreliable = set(provenance(table, key).get("unreliable_genes", []))
    units = provenance(table, key).get("units", "log1p normalised")
    figure, axes = axes_grid(ax, len(genes), 2, (11.6, panel_height(view, 4.6) * len(genes)), what="panel")
    for row, gene in enumerate(genes):
        flag = " — unreliable in CV" if gene in unreliable else ""
        for column, (label, frame, colours) in enumerate(
            [("predicted", predicted, cmap), ("uncertainty (spread)", spread, uncertainty_cmap)]
        ):
            ax = axes[row, column]
            value = frame[gene].to_numpy(dtype=float)
            vmin, vmax = robust_limits(value)
            if column == 1:
                vmin = 0.0
            points = draw_spots(ax, view, value, cmap=colours, vmin=vmin, vmax=vmax)
            ax.set_title(f"{gene}: {label}{flag}")
            what = "predicted" if column == 0 else "spread (s.d. of retrieved spots)"
            figure.colorbar(points, ax=ax, shrink=0.8, label=f"{gene} {what} ({units})")
    return finish(figure, figure, title=title, save=save, show=show)


def _predictions_on_tissue(sdata, genes, key, max_image_pixels, image_key, table_key, coordinate_system):
    """The genes as a list, the section's view (image level, spots) and the predictions of those genes."""
    genes = gene_list(genes)
    view = tissue_view(
        sdata,
        max_image_pixels=max_image_pixels,
        image_key=image_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
        obsm_key=key,
    )
    return genes, view, prediction_frame(view.table, key, list(genes))
