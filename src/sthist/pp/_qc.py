"""Spot quality control: patches that leave the image, spots off tissue (simple tissue mask)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import (
    DEFAULT_COORDINATE_SYSTEM,
    QC_IN_IMAGE,
    QC_ON_TISSUE,
    QC_PASS,
    QC_TISSUE_FRACTION,
    QC_UNS_KEY,
)
from sthist._core._elements import resolve_elements, spot_centres, spot_table, table_region
from sthist._core._image import ImageLevel, resolve_section_image, to_pixels
from sthist._logging import logger
from sthist.pp._geometry import DEFAULT_PATCH_SIZE_PX, DEFAULT_PATCH_SIZE_UM, patch_geometry

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Resolution (µm/px) at which the tissue mask is computed: finer than a spot, coarse enough to be cheap.
TISSUE_MASK_MICRONS_PER_PIXEL = 16.0
#: Bounds of the saturation threshold between glass and stained tissue.
MIN_SATURATION, MAX_SATURATION = 0.04, 0.12


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[np.argmax(between)])


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB H&E image (h, w, 3; uint8).

    Stained tissue is coloured; glass is bright and grey, masked background is black. A pixel is tissue when
    its saturation exceeds an Otsu threshold (clipped to 0.05-0.25) and it is not near-black; small holes
    (fat, tears) inside tissue are closed.
    """
    from scipy import ndimage

    rgb = rgb.astype(np.float32) / 255.0
    brightest = rgb.max(axis=-1)
    saturation = (brightest - rgb.min(axis=-1)) / np.maximum(brightest, 1e-6)
    lit = brightest > 0.1
    if not lit.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    threshold = float(np.clip(_otsu(saturation[lit]), MIN_SATURATION, MAX_SATURATION))
    mask = lit & (saturation > threshold)
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_opening(mask, structure=np.ones((3, 3)))


def _mask_level(levels: list[ImageLevel], microns_per_pixel: float) -> ImageLevel:
    chosen = levels[0]
    for level in levels[1:]:
        if max(level.pixel_size) * microns_per_pixel <= TISSUE_MASK_MICRONS_PER_PIXEL:
            chosen = level
    return chosen


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
    """Fraction of each spot's disc that the tissue mask covers (indexed by table ``obs_names``).

    The disc is the spot's own radius (from the shapes) unless ``spot_diameter_um`` is given.
    """
    section = resolve_section_image(
        sdata,
        image_key=image_key,
        shapes_key=shapes_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
        microns_per_pixel=microns_per_pixel,
    )
    elements, scale, levels = section.elements, section.microns_per_pixel, section.levels
    level = _mask_level(levels, scale)
    rgb = np.asarray(level.data.transpose("y", "x", "c").data)
    mask = tissue_mask(rgb)
    table = spot_table(sdata, elements)
    centres = to_pixels(level, spot_centres(sdata, elements, table))
    if spot_diameter_um is not None:
        radii_system = np.full(len(centres), spot_diameter_um / 2 / scale)
    else:
        _, _, instance_key = table_region(table)
        shapes = sdata.shapes[elements.shapes_key]
        if "radius" not in shapes.columns:
            raise ValueError(
                f"Shapes {elements.shapes_key!r} have no 'radius' column; pass spot_diameter_um=."
            )
        radii_system = shapes["radius"].loc[table.obs[instance_key].to_numpy()].to_numpy(dtype=float)
    radii = radii_system / np.asarray(level.pixel_size).mean()
    height, width = mask.shape
    fractions = np.zeros(len(centres))
    for i, ((cx, cy), radius) in enumerate(zip(centres, radii, strict=True)):
        r = max(radius, 0.75)
        x0, x1 = int(np.floor(cx - r)), int(np.ceil(cx + r))
        y0, y1 = int(np.floor(cy - r)), int(np.ceil(cy + r))
        ys, xs = np.mgrid[y0:y1, x0:x1]
        disc = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r**2
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        covered = np.zeros_like(disc)
        covered[inside] = mask[ys[inside], xs[inside]]
        fractions[i] = (covered & disc).sum() / max(disc.sum(), 1)
    return pd.Series(fractions, index=table.obs_names, name=QC_TISSUE_FRACTION)


def qc_spots(
    sdata: SpatialData,
    *,
    patch_size_um: float = DEFAULT_PATCH_SIZE_UM,
    patch_size_px: int = DEFAULT_PATCH_SIZE_PX,
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
    patch_size_um, patch_size_px
        Patch geometry (µm, px) used to decide whether a spot's patch lies inside the image.
    min_tissue_fraction
        A spot is on tissue when at least this fraction of its disc is covered by the tissue mask.
    inplace
        Write the columns ``sthist_in_image``, ``sthist_tissue_fraction``, ``sthist_on_tissue`` and
        ``sthist_pass_qc`` into the table's ``obs`` (and the settings into ``uns['sthist_qc']``) and return
        ``None``; otherwise return them as a DataFrame and leave ``sdata`` untouched.
    overwrite
        Replace these columns when they exist already (refused otherwise).
    """
    if not 0 <= min_tissue_fraction <= 1:
        raise ValueError(f"min_tissue_fraction must lie in [0, 1], got {min_tissue_fraction!r}.")
    elements = resolve_elements(
        sdata,
        image_key=image_key,
        shapes_key=shapes_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
    )
    keys = {
        "image_key": elements.image_key,
        "shapes_key": elements.shapes_key,
        "table_key": elements.table_key,
    }
    table = sdata.tables[elements.table_key]
    columns = [QC_IN_IMAGE, QC_TISSUE_FRACTION, QC_ON_TISSUE, QC_PASS]
    if inplace and not overwrite and any(c in table.obs for c in columns):
        raise ValueError(
            f"Table {elements.table_key!r} already has QC columns {[c for c in columns if c in table.obs]}; "
            "pass overwrite=True to replace them."
        )
    geometry = patch_geometry(
        sdata,
        patch_size_um=patch_size_um,
        patch_size_px=patch_size_px,
        coordinate_system=coordinate_system,
        microns_per_pixel=microns_per_pixel,
        **keys,
    )
    fraction = spot_tissue_fraction(
        sdata, coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel, **keys
    )
    result = pd.DataFrame(index=pd.Index(geometry.obs_names, name=table.obs_names.name))
    result[QC_IN_IMAGE] = geometry.inside
    result[QC_TISSUE_FRACTION] = fraction.loc[result.index].to_numpy()
    result[QC_ON_TISSUE] = result[QC_TISSUE_FRACTION] >= min_tissue_fraction
    result[QC_PASS] = result[QC_IN_IMAGE] & result[QC_ON_TISSUE]
    logger.info(
        "QC: %d of %d spots pass (%d with patches leaving the image, %d off tissue)",
        int(result[QC_PASS].sum()),
        len(result),
        int((~result[QC_IN_IMAGE]).sum()),
        int((~result[QC_ON_TISSUE]).sum()),
    )
    if not inplace:
        return result
    full = result.reindex(table.obs_names)
    for column in columns:
        values = full[column]
        table.obs[column] = values.fillna(False).astype(bool) if column != QC_TISSUE_FRACTION else values
    table.uns[QC_UNS_KEY] = {
        "patch_size_um": float(patch_size_um),
        "patch_size_px": int(patch_size_px),
        "min_tissue_fraction": float(min_tissue_fraction),
        "tissue_mask_microns_per_pixel": TISSUE_MASK_MICRONS_PER_PIXEL,
    }
    logger.info("added table.obs %s", columns)
    return None
