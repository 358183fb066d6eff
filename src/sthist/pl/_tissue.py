"""Drawing spots at their true size over a section's H&E image (shared by the tissue plots)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sthist._core._checks import did_you_mean
from sthist._core._elements import table_holding
from sthist._core._image import level_pixels, to_pixels
from sthist._core._section import Section


@dataclass
class TissueView:
    """The H&E at one pyramid level and the spots of a table in that level's pixels."""

    rgb: np.ndarray
    xy: np.ndarray
    diameters: np.ndarray
    table: object
    microns_per_pixel: float | None

    @property
    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """X and y limits (y inverted, image convention) framing the spots with a margin of two diameters."""
        margin = self.diameters.max() * 2
        x = (max(self.xy[:, 0].min() - margin, 0), min(self.xy[:, 0].max() + margin, self.rgb.shape[1]))
        y = (min(self.xy[:, 1].max() + margin, self.rgb.shape[0]), max(self.xy[:, 1].min() - margin, 0))
        return x, y


def panel_height(view: TissueView, width: float) -> float:
    """Figure height (inches) of a panel ``width`` inches wide showing the view at its true aspect, plus title."""
    (x0, x1), (y0, y1) = view.limits
    return width * abs(y0 - y1) / max(abs(x1 - x0), 1e-9) + 0.5


def tissue_view(
    sdata,
    *,
    max_image_pixels: int,
    image_key: str | None,
    table_key: str | None,
    coordinate_system: str,
    obsm_key: str | None = None,
) -> TissueView:
    """Read the pyramid level whose longer side is closest to ``max_image_pixels`` and place the spots on it."""
    if len(sdata.tables) > 1:
        table_key = table_holding(sdata, table_key, obsm_key=obsm_key)
    section = Section.resolve(
        sdata, image_key=image_key, table_key=table_key, coordinate_system=coordinate_system,
        require_scale=False,
    )  # fmt: skip
    level = min(section.levels, key=lambda lv: abs(max(lv.shape) - max_image_pixels))
    rgb = level_pixels(level)
    xy = to_pixels(level, section.centres)
    diameters = 2 * section.radii / np.mean(level.pixel_size)
    microns = None
    if section.microns_per_pixel is not None:
        microns = section.microns_per_pixel * float(np.mean(level.pixel_size))
    return TissueView(rgb=rgb, xy=xy, diameters=diameters, table=section.table, microns_per_pixel=microns)


def draw_spots(ax, view: TissueView, values: np.ndarray, *, cmap: str, vmin: float, vmax: float):
    """Draw the image and the spots coloured by ``values`` (NaN spots left uncoloured); return the collection."""
    from matplotlib.collections import EllipseCollection

    ax.imshow(view.rgb)
    # Spots drawn at their true size (data units), so the tissue and the spot grid keep their aspect.
    points = EllipseCollection(
        view.diameters, view.diameters, np.zeros(len(view.xy)), units="xy", offsets=view.xy,
        offset_transform=ax.transData, cmap=cmap, linewidths=0,
    )  # fmt: skip
    points.set_array(np.ma.masked_invalid(np.asarray(values, dtype=float)))
    points.set_clim(vmin, vmax)
    ax.add_collection(points)
    frame_tissue(ax, view)
    return points


def frame_tissue(ax, view: TissueView) -> None:
    """Frame the spots at the image's aspect, without ticks, with a scale bar when the scale is known."""
    (x0, x1), (y0, y1) = view.limits
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if view.microns_per_pixel:
        scale_bar(ax, view.microns_per_pixel, x1 - x0)


def scale_bar(ax, microns_per_pixel: float, width_px: float) -> None:
    """A scale bar of a round length near a fifth of the panel's width, bottom left."""
    target = width_px * microns_per_pixel / 5
    length_um = min((1, 2, 5), key=lambda m: abs(np.log(m * 10 ** np.floor(np.log10(target)) / target)))
    length_um *= 10 ** np.floor(np.log10(target))
    length_px = length_um / microns_per_pixel
    (x0, _), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    height = abs(y0 - y1)
    x, y = x0 + 0.05 * width_px, y0 - 0.05 * height
    ax.plot([x, x + length_px], [y, y], color="black", linewidth=3, solid_capstyle="butt")
    label = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"
    ax.text(
        x + length_px / 2, y - 0.02 * height, label, ha="center", va="bottom", fontsize=8,
        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0},
    )  # fmt: skip


def robust_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """2nd and 98th percentiles of the finite values of all arrays (one colour scale for all)."""
    finite = np.concatenate([np.asarray(a, dtype=float)[np.isfinite(a)] for a in arrays])
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [2, 98])
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1e-6)


def prediction_frame(table, key: str, genes: list[str]) -> pd.DataFrame:
    """``table.obsm[key]`` restricted to ``genes``, with clear errors when either is missing."""
    if key not in table.obsm:
        raise KeyError(
            f"No predictions under table.obsm[{key!r}]; run `sthist.tl.predict(sdata, model)` first."
        )
    frame = table.obsm[key]
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"table.obsm[{key!r}] must be a DataFrame with gene names as columns.")
    missing = [g for g in genes if g not in frame.columns]
    if missing:
        raise KeyError(
            f"Genes {missing} are not among the predictions in table.obsm[{key!r}]."
            + did_you_mean(missing, frame.columns)
        )
    return frame[genes]


def provenance(table, key: str) -> Mapping:
    """``table.uns[key]`` as written by ``tl.predict`` / ``tl.predict_tiles``, or an empty mapping."""
    provenance = table.uns.get(key, {})
    return provenance if isinstance(provenance, Mapping) else {}


def gene_list(genes) -> list[str]:
    """One gene name or several, as a non-empty list."""
    if isinstance(genes, str):
        return [genes]
    genes = list(genes)
    if not genes:
        raise ValueError("Give at least one gene to plot.")
    return genes


def axes_grid(ax, rows: int, columns: int, figsize: tuple[float, float], *, what: str, sharey: bool = False):
    """A new figure with ``rows × columns`` Axes, or the user's Axes (one, or a sequence of ``rows × columns``).

    Returns the figure and a 2-d array of Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        figure, axes = plt.subplots(
            rows, columns, figsize=figsize, squeeze=False, layout="constrained", sharey=sharey
        )
        return figure, axes
    given = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
    n = rows * columns
    if len(given) != n:
        raise ValueError(f"Pass one Axes per {what}: {n} {what}s, {len(given)} Axes.")
    return given[0].figure, np.array(given, dtype=object).reshape(rows, columns)


def finish(figure, returned, *, title: str | None, save, show: bool | None):
    """Title, save when asked, then show (returning ``None``) or return ``returned`` (scanpy's convention)."""
    if title:
        figure.suptitle(title)
    if save is not None:
        figure.savefig(save, dpi=110)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return returned
