"""Patch geometry: physical patch size ↔ pixels, choice of pyramid level, spot centres in level pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM
from sthist._core._elements import spot_centres, spot_table
from sthist._core._image import ImageLevel, resolve_section_image, to_pixels

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Default physical patch size (µm) and its size after resampling (px): 0.5 µm/px, the HEST convention.
DEFAULT_PATCH_SIZE_UM = 112.0
DEFAULT_PATCH_SIZE_PX = 224


@dataclass(frozen=True)
class PatchGeometry:
    """Where the patch of each spot of one section lies in the chosen pyramid level.

    Attributes
    ----------
    level
        The pyramid level patches are read from.
    level_microns_per_pixel
        µm per pixel of that level (x, y).
    patch_size_um
        Side of a patch in µm.
    patch_size_px
        Side of a patch after resampling, in pixels.
    centres
        Spot centres in level pixel coordinates (n, 2; x, y; pixel ``j`` spans ``[j, j + 1)``).
    obs_names
        Table rows (``obs_names``) of the spots, in the order of ``centres``.
    """

    level: ImageLevel
    level_microns_per_pixel: tuple[float, float]
    patch_size_um: float
    patch_size_px: int
    centres: np.ndarray
    obs_names: np.ndarray

    @property
    def crop_size(self) -> tuple[float, float]:
        """Side of a patch in level pixels (x, y)."""
        return (
            self.patch_size_um / self.level_microns_per_pixel[0],
            self.patch_size_um / self.level_microns_per_pixel[1],
        )

    @property
    def boxes(self) -> np.ndarray:
        """Patch boxes in level pixel coordinates (n, 4): x0, y0, x1, y1."""
        half = np.asarray(self.crop_size) / 2
        return np.c_[self.centres - half, self.centres + half]

    @property
    def inside(self) -> np.ndarray:
        """Whether each spot's patch lies entirely inside the image."""
        height, width = self.level.shape
        boxes = self.boxes
        return (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)


def choose_level(
    levels: list[ImageLevel], microns_per_pixel: float, target_microns_per_pixel: float
) -> ImageLevel:
    """The coarsest level that is still at least as fine as the target resolution (10 % slack).

    Reading from it loses no detail the resampled patch could show, and reads the fewest pixels. When every
    level is coarser than the target, the finest level is used (the patch is upsampled).
    """
    chosen = levels[0]
    for level in levels[1:]:
        if max(level.pixel_size) * microns_per_pixel <= target_microns_per_pixel * 1.1:
            chosen = level
    return chosen


def patch_geometry(
    sdata: SpatialData,
    *,
    patch_size_um: float = DEFAULT_PATCH_SIZE_UM,
    patch_size_px: int = DEFAULT_PATCH_SIZE_PX,
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
    patch_size_um
        Side of the square patch centred on each spot, in µm.
    patch_size_px
        Side of the patch after resampling, in pixels (the encoder's input size).
    image_key, shapes_key, table_key
        Element names; resolved automatically when unambiguous.
    coordinate_system
        Coordinate system shared by image and spots.
    microns_per_pixel
        µm per unit of ``coordinate_system``; read from ``sdata.attrs`` when not given.
    level
        Force a pyramid level (0 = full resolution); by default the coarsest level at least as fine as
        ``patch_size_um / patch_size_px`` µm/px.
    """
    if not np.isfinite(patch_size_um) or patch_size_um <= 0:
        raise ValueError(f"patch_size_um must be a positive number of µm, got {patch_size_um!r}.")
    if int(patch_size_px) != patch_size_px or patch_size_px < 8:
        raise ValueError(f"patch_size_px must be an integer of at least 8 pixels, got {patch_size_px!r}.")
    section = resolve_section_image(
        sdata,
        image_key=image_key,
        shapes_key=shapes_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
        microns_per_pixel=microns_per_pixel,
    )
    elements, scale, levels = section.elements, section.microns_per_pixel, section.levels
    if level is None:
        chosen = choose_level(levels, scale, patch_size_um / patch_size_px)
    elif not 0 <= level < len(levels):
        raise ValueError(f"level must be between 0 and {len(levels) - 1}, got {level}.")
    else:
        chosen = levels[level]
    table = spot_table(sdata, elements)
    centres = to_pixels(chosen, spot_centres(sdata, elements, table))
    return PatchGeometry(
        level=chosen,
        level_microns_per_pixel=(chosen.pixel_size[0] * scale, chosen.pixel_size[1] * scale),
        patch_size_um=float(patch_size_um),
        patch_size_px=int(patch_size_px),
        centres=centres,
        obs_names=table.obs_names.to_numpy(),
    )
