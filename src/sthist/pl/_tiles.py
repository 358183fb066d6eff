"""Whole-slide maps: tile predictions from :func:`sthist.tl.predict_tiles` as a raster over the H&E."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._checks import did_you_mean
from sthist._core._docs import doc_params
from sthist.pl._tissue import (
    axes_grid,
    finish,
    frame_tissue,
    gene_list,
    panel_height,
    provenance,
    robust_limits,
    tissue_view,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@doc_params
def tiles(
    sdata: SpatialData,
    genes: Sequence[str],
    *,
    key: str = Key.shapes.TILES,
    uncertainty: bool = True,
    alpha: float = 0.8,
    max_image_pixels: int = 1500,
    cmap: str = "viridis",
    uncertainty_cmap: str = "magma",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
) -> Figure | None:
    """Map predicted expression over a whole section: one square per tile, drawn over the H&E.

    Reads the shapes ``key`` and the table ``key + '_table'`` written by :func:`sthist.tl.predict_tiles`.
    Each gene gets a row: the prediction and, with ``uncertainty`` (retrieval methods), the spread of the
    retrieved spots beside it, each with its own colour bar. Areas without tiles (background, tissue below the
    tissue-fraction threshold) show the bare image. Genes flagged unreliable in cross-validation are marked.

    Parameters
    ----------
    sdata
        Section holding the tiles written by :func:`sthist.tl.predict_tiles`.
    genes
        One gene or several (one row each).
    key
        ``key_added`` of :func:`sthist.tl.predict_tiles`: the shapes ``key`` and the table
        ``key + '_table'``.
    uncertainty
        Draw the spread of the retrieved spots beside the prediction (retrieval methods).
    alpha
        Opacity of the tile raster over the H&E.
    max_image_pixels
        Longer side (px) of the pyramid level drawn under the tiles.
    cmap, uncertainty_cmap
        Colour maps of the prediction and of its spread.
    title
        Figure title.
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
    >>> sthist.tl.predict_tiles(sections["toy1"], model)
    >>> figure = sthist.pl.tiles(sections["toy1"], model.genes[0], uncertainty=False)
    >>> figure.axes[0].get_title() == f"{model.genes[0]}: predicted"
    True
    """
    genes = gene_list(genes)
    table_key = Key.tables.tiles(key)
    if table_key not in sdata.tables or key not in sdata.shapes:
        raise KeyError(
            f"No tile predictions under shapes[{key!r}] and tables[{table_key!r}]; "
            "run `sthist.tl.predict_tiles(sdata, model)` first (or pass its key_added as key=)."
        )
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}.")
    table = sdata.tables[table_key]
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        raise KeyError(
            f"Genes {missing} are not among the tile predictions (tables[{table_key!r}])."
            + did_you_mean(missing, table.var_names)
        )
    image_key = provenance(table, key).get("image_key")
    view = tissue_view(
        sdata,
        max_image_pixels=max_image_pixels,
        image_key=image_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
    )
    spread = table.layers[Key.layers.UNCERTAINTY] if Key.layers.UNCERTAINTY in table.layers else None
    show_spread = uncertainty and spread is not None and np.isfinite(np.asarray(spread)).any()
    columns = 2 if show_spread else 1
    unreliable = (
        set(table.var_names[table.var[Key.var.UNRELIABLE].astype(bool)])
        if Key.var.UNRELIABLE in table.var
        else set()
    )
    units = provenance(table, key).get("units", "log1p normalised")
    figure, axes = axes_grid(
        ax, len(genes), columns, (5.8 * columns, panel_height(view, 4.6) * len(genes)), what="panel"
    )
    for row, gene in enumerate(genes):
        column = table.var_names.get_loc(gene)
        layers = [("predicted", np.asarray(table.X[:, column], dtype=float).ravel(), cmap)]
        if show_spread:
            layers.append(
                ("uncertainty", np.asarray(spread[:, column], dtype=np.float64).ravel(), uncertainty_cmap)  # type: ignore[index]
            )
        flag = " — unreliable in CV" if gene in unreliable else ""
        for ax, (label, values, colours) in zip(axes[row], layers, strict=True):
            vmin, vmax = robust_limits(values)
            if label == "uncertainty":
                vmin = 0.0
            image = draw_raster(ax, view, values, cmap=colours, vmin=vmin, vmax=vmax, alpha=alpha)
            ax.set_title(f"{gene}: {label}{flag}")
            figure.colorbar(image, ax=ax, shrink=0.8, label=f"{gene} {label} ({units})")
    return finish(figure, figure, title=title, save=save, show=show)


def tile_raster(view, values: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Values of tiles on a regular grid as a 2-d array (NaN where there is no tile) and its image extent.

    The grid step is measured along each axis from the tile centres (drawn pixels need not be square:
    an image with anisotropic pixels has different steps in x and y). Two tiles falling in one cell are
    refused rather than drawn over each other.
    """
    xy = np.asarray(view.xy, dtype=float)
    fallback = float(np.median(view.diameters))
    step = np.array([_grid_step(xy[:, axis], fallback) for axis in (0, 1)])
    origin = xy.min(axis=0)
    cells = np.rint((xy - origin) / step).astype(int)
    raster = np.full((cells[:, 1].max() + 1, cells[:, 0].max() + 1), np.nan)
    flat = cells[:, 1] * raster.shape[1] + cells[:, 0]
    if len(np.unique(flat)) != len(flat):
        raise ValueError(
            f"The tiles do not lie on a regular grid ({len(flat) - len(np.unique(flat))} fall on cells already "
            "taken); they cannot be drawn as a raster. Plot them as spots with sthist.pl.expression instead."
        )
    raster[cells[:, 1], cells[:, 0]] = values
    x0, y0 = origin - step / 2
    extent = (x0, x0 + raster.shape[1] * step[0], y0 + raster.shape[0] * step[1], y0)
    return raster, extent


def _grid_step(positions: np.ndarray, fallback: float) -> float:
    """Spacing of a regular grid along one axis from the positions of its points."""
    tolerance = 1e-3 * fallback
    unique = np.unique(positions)
    gaps = np.diff(unique)
    gaps = gaps[gaps > tolerance]
    if len(gaps) == 0:
        return fallback
    smallest = gaps.min()
    # Gaps are whole multiples of the step (rows may skip cells where there is no tissue).
    return float(np.median(gaps[gaps < 1.5 * smallest]))


def draw_raster(ax, view, values: np.ndarray, *, cmap: str, vmin: float, vmax: float, alpha: float):
    """Draw the image, then the tiles' values as a semi-transparent raster; return the raster's image."""
    ax.imshow(view.rgb)
    raster, extent = tile_raster(view, values)
    image = ax.imshow(
        np.ma.masked_invalid(raster), extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha,
        interpolation="nearest",
    )  # fmt: skip
    frame_tissue(ax, view)
    return image
