"""``sthist.tl.to_anndata`` and ``to_spatialdata``: predictions for scanpy and for spatialdata-plot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._docs import doc_params
from sthist._core._image import level_pixels
from sthist._core._section import Section
from sthist._logging import logger

if TYPE_CHECKING:
    import anndata as ad
    from spatialdata import SpatialData


@doc_params
def to_anndata(
    sdata: SpatialData,
    *,
    key: str = Key.obsm.PREDICTION,
    library_id: str | None = None,
    max_image_pixels: int = 2000,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
) -> ad.AnnData:
    """The predicted expression of a section's spots as a new AnnData, in the layout scanpy expects.

    Spots without a prediction (left out by a QC column) are dropped. ``X`` holds the predictions
    (log1p units), ``layers['uncertainty']`` their spread when the method reports one, ``obs`` the spots'
    annotations, ``obsm['spatial']`` the spot centres in coordinate-system units, and ``uns['spatial']``
    a low-resolution H&E image with its scale factors, so that ``sc.pl.spatial(adata, color=gene)`` draws
    predictions on the tissue. The prediction's provenance is kept in ``uns[key]``.

    Parameters
    ----------
    sdata
        A section with predictions from :func:`sthist.tl.predict`.
    {key}
    library_id
        Name of the image entry in ``uns['spatial']`` (the section's name by default).
    max_image_pixels
        Longer side (px) of the image kept in ``uns['spatial']``.
    {element_keys}
    {coordinate_system}

    Returns
    -------
    A new AnnData (predicted spots × genes); ``sdata`` is not changed.

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> import scanpy as sc
    >>> import sthist
    >>> sthist.tl.predict(sections["toy1"], model)
    >>> adata = sthist.tl.to_anndata(sections["toy1"])
    >>> sc.pp.pca(adata, n_comps=5)
    >>> adata.obsm["X_pca"].shape
    (100, 5)
    """
    section = Section.resolve(
        sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
        coordinate_system=coordinate_system, require_scale=False,
    )  # fmt: skip
    adata, rows = _predicted_spots(section, key)
    library_id = library_id or section.name
    level = min(section.levels, key=lambda lv: abs(max(lv.shape) - max_image_pixels))
    scales = _axis_aligned_scales(level.to_pixels)
    if scales is None:
        logger.warning(
            "to_anndata: the image is rotated, sheared or offset against %r; uns['spatial'] is left out, so "
            "sc.pl.spatial draws no H&E (obsm['spatial'] holds the spot centres).",
            coordinate_system,
        )
    else:
        rgb = level_pixels(level)
        to_view = min(scales)
        if not np.isclose(scales[0], scales[1], rtol=1e-3):  # pixels not square: resample to one scale
            from PIL import Image

            height, width = rgb.shape[:2]
            size = (round(width * to_view / scales[0]), round(height * to_view / scales[1]))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        adata.uns["spatial"] = {
            library_id: {
                "images": {"lowres": rgb.astype(np.float32) / 255.0},
                "scalefactors": {
                    "tissue_lowres_scalef": to_view,
                    "spot_diameter_fullres": float(2 * np.median(section.radii[rows])),
                },
                "metadata": {"source": "sthist.tl.to_anndata", "coordinate_system": coordinate_system},
            }
        }
    return adata


def _predicted_spots(section: Section, key: str) -> tuple[ad.AnnData, np.ndarray]:
    """The predicted spots of a resolved section, and the mask of the table rows they come from.

    The AnnData holds the predictions in ``X``, their spread in ``layers``, the spots' ``obs``, their centres in
    ``obsm['spatial']`` and the prediction's provenance in ``uns[key]``.
    """
    import anndata as ad

    table = section.table
    if key not in table.obsm:
        raise KeyError(
            f"No predictions under table.obsm[{key!r}]; run `sthist.tl.predict(sdata, model)` first. "
            f"Available: {sorted(table.obsm.keys())}."
        )
    predicted = table.obsm[key]
    rows = predicted.notna().all(axis=1).to_numpy()
    if not rows.any():
        raise ValueError(f"table.obsm[{key!r}] holds no predicted spot (all NaN).")
    layers = {}
    uncertainty_key = Key.obsm.uncertainty(key)
    if uncertainty_key in table.obsm and np.isfinite(table.obsm[uncertainty_key].to_numpy()).any():
        layers[Key.layers.UNCERTAINTY] = table.obsm[uncertainty_key].to_numpy(dtype=np.float32)[rows]
    adata = ad.AnnData(
        X=predicted.to_numpy(dtype=np.float32)[rows],
        obs=table.obs.iloc[np.flatnonzero(rows)].copy(),
        var=predicted.columns.to_frame(name="gene").set_index("gene"),
        layers=layers,
    )
    adata.obsm[Key.obsm.SPATIAL] = section.centres[rows]
    record = table.uns.get(key)
    if isinstance(record, dict):
        adata.uns[key] = dict(record)
    return adata, rows


def _axis_aligned_scales(to_pixels: np.ndarray) -> tuple[float, float] | None:
    """The x and y factors from coordinate-system units to a level's pixels, if that map is a pure scale."""
    matrix = np.asarray(to_pixels, dtype=float)
    if (
        np.isclose(matrix[0, 1], 0)
        and np.isclose(matrix[1, 0], 0)
        and matrix[0, 0] > 0
        and matrix[1, 1] > 0
        and np.allclose(matrix[:2, 2], 0, atol=1e-6)
    ):
        return float(matrix[0, 0]), float(matrix[1, 1])
    return None


@doc_params
def to_spatialdata(
    sdata: SpatialData,
    *,
    key: str = Key.obsm.PREDICTION,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
) -> SpatialData:
    """A new SpatialData of the section's image and spots with the predictions as its table, for spatialdata-plot.

    spatialdata-plot colours shapes by the genes of a table's ``X``; sthist writes predictions to
    ``obsm`` so the measured expression stays in ``X``. This returns a new SpatialData object holding the
    same image and spots elements (not copied) and one table, ``'predictions'``, annotating the spots, with
    ``X`` = predictions (log1p units), ``layers['uncertainty']`` and ``obs`` as in :func:`to_anndata`.
    ``sdata`` is not changed, so its own table stays the one every sthist function finds.

    Parameters
    ----------
    sdata
        A section with predictions from :func:`sthist.tl.predict` (spots, or the tiles of
        :func:`sthist.tl.predict_tiles` with ``shapes_key`` and ``table_key`` naming them).
    {key}
    {element_keys}
    {coordinate_system}

    Returns
    -------
    A new SpatialData object: ``images`` (the H&E), ``shapes`` (the spots), ``tables['predictions']``.

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> import sthist
    >>> sthist.tl.predict(sections["toy1"], model)
    >>> view = sthist.tl.to_spatialdata(sections["toy1"])
    >>> view.tables["predictions"].n_vars == len(model.genes)
    True
    >>> # import spatialdata_plot; view.pl.render_images().pl.render_shapes(color=model.genes[0]).pl.show()
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    section = Section.resolve(
        sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
        coordinate_system=coordinate_system, require_scale=False,
    )  # fmt: skip
    spots = section.spots
    adata, _ = _predicted_spots(section, key)  # no image in uns: it is an element of the SpatialData object
    attrs = section.table.uns["spatialdata_attrs"]
    adata.obs[attrs["region_key"]] = adata.obs[attrs["region_key"]].astype("category")
    table = TableModel.parse(
        adata, region=spots.shapes_key, region_key=attrs["region_key"], instance_key=attrs["instance_key"]
    )
    return SpatialData(
        images={section.image_key: sdata.images[section.image_key]},
        shapes={spots.shapes_key: sdata.shapes[spots.shapes_key]},
        tables={Key.tables.PREDICTIONS: table},
    )
