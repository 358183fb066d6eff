"""Expression on tissue: spots coloured by observed and predicted expression over the H&E image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, NORMALIZED_LAYER, PREDICTION_KEY
from sthist._core._elements import resolve_elements, spot_centres, spot_table, table_region
from sthist._core._image import image_levels, to_pixels


def expression(
    sdata,
    genes: Sequence[str],
    *,
    key: str = PREDICTION_KEY,
    observed_layer: str | None = NORMALIZED_LAYER,
    max_image_pixels: int = 1500,
    cmap: str = "viridis",
    title: str | None = None,
    save: str | Path | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
):
    """Plot expression of ``genes`` at the spots over the H&E image: observed beside predicted.

    Each gene gets a row: observed (from ``observed_layer``; left out when ``None``) and predicted
    (``table.obsm[key]``) share one colour scale (2nd-98th percentile of both) and one colour bar. Titles
    carry the gene and the Pearson r across spots. The image is drawn from the pyramid level whose longer
    side is closest to ``max_image_pixels``.

    Returns
    -------
    The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

    from sthist.tl._metrics import gene_pearson

    elements = resolve_elements(
        sdata, image_key=image_key, table_key=table_key, coordinate_system=coordinate_system
    )
    table = spot_table(sdata, elements)
    if key not in table.obsm:
        raise KeyError(
            f"No predictions under table.obsm[{key!r}]; run `sthist.tl.predict(sdata, model)` first."
        )
    predicted = table.obsm[key]
    genes = list(genes)
    missing = [g for g in genes if g not in predicted.columns]
    if missing:
        raise KeyError(f"Genes {missing} are not among the predictions in table.obsm[{key!r}].")
    observed = None
    if observed_layer is not None:
        if observed_layer not in table.layers:
            raise KeyError(f"No layer {observed_layer!r} with observed expression; pass observed_layer=None.")
        observed = table[:, genes].to_df(layer=observed_layer)
    levels = image_levels(
        sdata.images[elements.image_key], coordinate_system=coordinate_system, image_key=elements.image_key
    )
    level = min(levels, key=lambda lv: abs(max(lv.shape) - max_image_pixels))
    rgb = np.asarray(level.data.transpose("y", "x", "c").data)
    xy = to_pixels(level, spot_centres(sdata, elements, table))
    shapes = sdata.shapes[elements.shapes_key]
    _, _, instance_key = table_region(table)
    radius_units = shapes["radius"].loc[table.obs[instance_key].to_numpy()].to_numpy(dtype=float)
    diameters = 2 * radius_units / np.mean(level.pixel_size)
    margin = diameters.max() * 2
    extent = (max(xy[:, 0].min() - margin, 0), min(xy[:, 0].max() + margin, rgb.shape[1]))
    extent_y = (min(xy[:, 1].max() + margin, rgb.shape[0]), max(xy[:, 1].min() - margin, 0))
    columns = 1 if observed is None else 2
    figure, axes = plt.subplots(
        len(genes), columns, figsize=(4.6 * columns, 4.2 * len(genes)), squeeze=False, layout="constrained"
    )
    for row, gene in enumerate(genes):
        values = {"predicted": predicted[gene].to_numpy(dtype=float)}
        if observed is not None:
            values = {"observed": observed[gene].to_numpy(dtype=float), **values}
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        r = None
        if observed is not None:
            mask = np.isfinite(values["predicted"])
            r = gene_pearson(
                pd.DataFrame({gene: values["observed"][mask]}),
                pd.DataFrame({gene: values["predicted"][mask]}),
            ).iloc[0]
        for column, (label, value) in enumerate(values.items()):
            ax = axes[row, column]
            ax.imshow(rgb)
            # Spots drawn at their true size (data units), so the tissue and the spot grid keep their aspect.
            points = EllipseCollection(
                diameters, diameters, np.zeros(len(xy)), units="xy", offsets=xy,
                offset_transform=ax.transData, cmap=cmap, linewidths=0,
            )  # fmt: skip
            points.set_array(np.ma.masked_invalid(value))
            points.set_clim(vmin, vmax)
            ax.add_collection(points)
            ax.set_xlim(*extent)
            ax.set_ylim(*extent_y)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            suffix = f" (r = {r:.2f})" if (label == "predicted" and r is not None) else ""
            ax.set_title(f"{gene}: {label}{suffix}")
        figure.colorbar(points, ax=axes[row, :].tolist(), shrink=0.8, label=f"{gene} (log1p normalised)")
    if title:
        figure.suptitle(title)
    if save is not None:
        figure.savefig(save, dpi=110)
    return figure
