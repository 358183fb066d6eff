"""Spot quality control: patches that leave the image, spots off tissue (simple tissue mask)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._config import PatchConfig
from sthist._core._docs import doc_params
from sthist._core._section import Section
from sthist._core._tissue import TISSUE_MASK_MICRONS_PER_PIXEL
from sthist._logging import logger

if TYPE_CHECKING:
    from spatialdata import SpatialData


@doc_params
def spot_tissue_fraction(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
    spot_diameter_um: float | None = None,
) -> pd.Series:
    """Fraction of each spot's disc that the tissue mask covers.

    The tissue mask is computed at about 16 µm/px (:func:`sthist.pp.tissue_mask`). The disc is the spot's
    own radius (from the shapes) unless ``spot_diameter_um`` is given.

    Parameters
    ----------
    sdata
        Section with image, spots and table.
    {element_keys}
    {coordinate_system}
    {microns_per_pixel}
    spot_diameter_um
        Diameter of the spots in µm, instead of the shapes' radii.

    Returns
    -------
    Fractions (0-1) indexed by the table's ``obs_names``.

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.toy(n_sections=1)["toy0"]
    >>> fraction = sthist.pp.spot_tissue_fraction(sdata)
    >>> bool((fraction > 0.5).all())
    True
    """
    section = Section.resolve(
        sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
        coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel,
    )  # fmt: skip
    return section.tissue_fraction(spot_diameter_um=spot_diameter_um)


@doc_params
def qc_spots(
    sdata: SpatialData,
    *,
    patch_size_um: float = PatchConfig.size_um,
    patch_size_px: int = PatchConfig.size_px,
    min_tissue_fraction: float = 0.5,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
    inplace: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame | None:
    """Flag spots whose patch leaves the image or that lie off tissue.

    Parameters
    ----------
    sdata
        Section with image, spots and table.
    {patch_size}
        Used to decide whether a spot's patch lies inside the image.
    min_tissue_fraction
        A spot is on tissue when at least this fraction of its disc is covered by the tissue mask.
    {element_keys}
    {coordinate_system}
    {microns_per_pixel}
    {inplace}
    {overwrite}

    Returns
    -------
    ``None`` with ``inplace=True``; it writes into the table:

    - ``obs`` column ``sthist_in_image``: the spot's patch lies entirely inside the image;
    - ``obs`` column ``sthist_tissue_fraction``: fraction of the spot's disc covered by the tissue mask;
    - ``obs`` column ``sthist_on_tissue``: that fraction is at least ``min_tissue_fraction``;
    - ``obs`` column ``sthist_pass_qc``: both;
    - ``uns`` entry ``sthist_qc``: the settings.

    With ``inplace=False``, these four columns as a DataFrame (spots × 4), ``sdata`` untouched.

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.toy(n_sections=1)["toy0"]
    >>> sthist.pp.qc_spots(sdata)
    >>> int(sdata.tables["table"].obs["sthist_pass_qc"].sum())
    100
    """
    if not 0 <= min_tissue_fraction <= 1:
        raise ValueError(f"min_tissue_fraction must lie in [0, 1], got {min_tissue_fraction!r}.")
    patch = PatchConfig(size_um=patch_size_um, size_px=patch_size_px)
    section = Section.resolve(
        sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
        coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel,
    )  # fmt: skip
    table_key = section.spots.table_key
    table = sdata.tables[table_key]
    columns = [Key.obs.QC_IN_IMAGE, Key.obs.QC_TISSUE_FRACTION, Key.obs.QC_ON_TISSUE, Key.obs.QC_PASS]
    if inplace and not overwrite and any(c in table.obs for c in columns):
        raise ValueError(
            f"Table {table_key!r} already has QC columns {[c for c in columns if c in table.obs]}; "
            "pass overwrite=True to replace them."
        )
    geometry = section.patch_geometry(patch)
    fraction = section.tissue_fraction()
    result = pd.DataFrame(index=pd.Index(geometry.obs_names, name=table.obs_names.name))
    result[Key.obs.QC_IN_IMAGE] = geometry.inside
    result[Key.obs.QC_TISSUE_FRACTION] = fraction.loc[result.index].to_numpy()
    result[Key.obs.QC_ON_TISSUE] = result[Key.obs.QC_TISSUE_FRACTION] >= min_tissue_fraction
    result[Key.obs.QC_PASS] = result[Key.obs.QC_IN_IMAGE] & result[Key.obs.QC_ON_TISSUE]
    logger.info(
        "QC: %d of %d spots pass (%d with patches leaving the image, %d off tissue)",
        int(result[Key.obs.QC_PASS].sum()),
        len(result),
        int((~result[Key.obs.QC_IN_IMAGE]).sum()),
        int((~result[Key.obs.QC_ON_TISSUE]).sum()),
    )
    if not inplace:
        return result
    full = result.reindex(table.obs_names)
    for column in columns:
        values = full[column]
        table.obs[column] = (
            values.fillna(False).astype(bool) if column != Key.obs.QC_TISSUE_FRACTION else values
        )
    table.uns[Key.uns.QC] = {
        "patch_size_um": float(patch_size_um),
        "patch_size_px": int(patch_size_px),
        "min_tissue_fraction": float(min_tissue_fraction),
        "tissue_mask_microns_per_pixel": TISSUE_MASK_MICRONS_PER_PIXEL,
    }
    logger.info("added table.obs %s", columns)
    return None
