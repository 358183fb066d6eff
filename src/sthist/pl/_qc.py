"""Spot quality control drawn on tissue: the tissue mask over the H&E, spots by their tissue fraction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._docs import doc_params
from sthist._core._tissue import tissue_mask
from sthist.pl._tissue import axes_grid, draw_spots, finish, frame_tissue, panel_height, tissue_view

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@doc_params
def qc(
    sdata: SpatialData,
    *,
    max_image_pixels: int = 1500,
    cmap: str = "viridis",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | Path | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
) -> Figure | None:
    """Show what :func:`sthist.pp.qc_spots` decided: the tissue mask over the H&E, and each spot's tissue fraction.

    Left, the H&E with the outline of the tissue mask (:func:`sthist.pp.tissue_mask` at the drawn level);
    right, the spots coloured by the fraction of their disc on tissue, those that failed QC (off tissue, or
    whose patch leaves the image) ringed in red. Use it to check the mask on pale or unusual stains before
    training.

    Parameters
    ----------
    sdata
        Section on which :func:`sthist.pp.qc_spots` ran (``obs['sthist_tissue_fraction']`` and
        ``obs['sthist_pass_qc']``).
    max_image_pixels
        Longer side (px) of the pyramid level drawn.
    cmap
        Colour map of the tissue fraction.
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
    >>> import sthist
    >>> sdata = sthist.datasets.toy(n_sections=1)["toy0"]
    >>> sthist.pp.qc_spots(sdata)
    >>> figure = sthist.pl.qc(sdata)
    >>> [ax.get_title() for ax in figure.axes[:2]]
    ['tissue mask', 'spots: tissue fraction (ringed: failed QC)']
    """
    from matplotlib.collections import EllipseCollection

    view = tissue_view(
        sdata, max_image_pixels=max_image_pixels, image_key=image_key, table_key=table_key,
        coordinate_system=coordinate_system,
    )  # fmt: skip
    obs = view.table.obs  # type: ignore[attr-defined]
    missing = [c for c in (Key.obs.QC_TISSUE_FRACTION, Key.obs.QC_PASS) if c not in obs]
    if missing:
        raise KeyError(f"The table has no {missing}; run `sthist.pp.qc_spots(sdata)` first.")
    figure, axes = axes_grid(ax, 1, 2, (11.6, panel_height(view, 5.0)), what="panel")
    left, right = axes[0]
    left.imshow(view.rgb)
    mask = (
        tissue_mask(view.rgb)
        if view.microns_per_pixel is None
        else tissue_mask(view.rgb, microns_per_pixel=view.microns_per_pixel)
    )
    if mask.any() and not mask.all():
        left.contour(mask, levels=[0.5], colors="#1f77b4", linewidths=1.2)
    frame_tissue(left, view)
    left.set_title("tissue mask")
    fraction = obs[Key.obs.QC_TISSUE_FRACTION].to_numpy(dtype=float)
    points = draw_spots(right, view, fraction, cmap=cmap, vmin=0.0, vmax=1.0)
    failed = ~obs[Key.obs.QC_PASS].to_numpy(dtype=bool)
    if failed.any():
        rings = EllipseCollection(
            view.diameters[failed] * 1.4, view.diameters[failed] * 1.4, np.zeros(int(failed.sum())), units="xy",
            offsets=view.xy[failed], offset_transform=right.transData, facecolors="none", edgecolors="red",
            linewidths=1.0,
        )  # fmt: skip
        right.add_collection(rings)
    right.set_title("spots: tissue fraction (ringed: failed QC)")
    figure.colorbar(points, ax=right, shrink=0.8, label="fraction of the spot on tissue (0-1)")
    return finish(
        figure,
        figure,
        title=title or f"QC: {int(failed.sum())} of {len(failed)} spots fail",
        save=save,
        show=show,
    )
