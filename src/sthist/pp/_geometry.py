"""Patch geometry of a section: physical patch size ↔ pixels, choice of pyramid level, spot centres in pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sthist._constants import DEFAULT_COORDINATE_SYSTEM
from sthist._core._config import PatchConfig
from sthist._core._docs import doc_params
from sthist._core._section import PatchGeometry, Section

if TYPE_CHECKING:
    from spatialdata import SpatialData


@doc_params
def patch_geometry(
    sdata: SpatialData,
    *,
    patch_size_um: float = PatchConfig.size_um,
    patch_size_px: int = PatchConfig.size_px,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
    level: int | None = None,
) -> PatchGeometry:
    """Compute where each spot's patch lies in the best pyramid level of the H&E image.

    Parameters
    ----------
    sdata
        Section with an H&E image, spots (circles) and a table annotating them.
    {patch_size}
    {element_keys}
    {microns_per_pixel}
    level
        Force a pyramid level (0 = full resolution); by default the coarsest level at least as fine as
        ``patch_size_um / patch_size_px`` µm/px.

    Returns
    -------
    The :class:`PatchGeometry`: chosen level, its µm/px, and the spot centres in its pixels.

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.toy(n_sections=1)["toy0"]
    >>> geometry = sthist.pp.patch_geometry(sdata, patch_size_um=112, patch_size_px=56)
    >>> geometry.level_microns_per_pixel
    (2.0, 2.0)
    """
    patch = PatchConfig(size_um=patch_size_um, size_px=patch_size_px)
    section = Section.resolve(
        sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
        coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel,
    )  # fmt: skip
    return section.patch_geometry(patch, level=level)
