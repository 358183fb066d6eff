"""One section resolved once: its elements, physical scale, image pyramid, spots and patch geometry.

Every layer that works on a section (QC, patch reading, fitting, prediction, plots) receives a
:class:`Section` built once by :meth:`Section.resolve` and asks it for what it needs; nothing downstream
resolves elements or the physical scale again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._config import PatchConfig
from sthist._core._elements import SpotElements, resolve_elements, table_region
from sthist._core._image import ImageLevel, image_levels, level_pixels, to_pixels, warn_missing_chunks
from sthist._core._scale import get_microns_per_pixel
from sthist._core._stain import StainStats, stain_stats
from sthist._core._tissue import TISSUE_MASK_MICRONS_PER_PIXEL, tissue_mask

if TYPE_CHECKING:
    import anndata as ad
    from spatialdata import SpatialData


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


def coarsest_level(
    levels: list[ImageLevel], microns_per_pixel: float, target_microns_per_pixel: float, *, slack: float = 1.0
) -> ImageLevel:
    """The coarsest level still at least as fine as ``target_microns_per_pixel`` (times ``slack``).

    Reading from it loses no detail the target resolution could show, and reads the fewest pixels. When every
    level is coarser than the target, the finest level is used.
    """
    chosen = levels[0]
    for level in levels[1:]:
        if max(level.pixel_size) * microns_per_pixel <= target_microns_per_pixel * slack:
            chosen = level
    return chosen


@dataclass(frozen=True)
class Section:
    """A section's elements, physical scale and image pyramid, resolved once and passed down.

    Attributes
    ----------
    sdata
        The SpatialData object.
    name
        Name of the section (used in messages and as its key among several sections).
    elements
        Names of the image, spots and table; ``None`` for an image-only section (tiles).
    image_key
        Name of the H&E image.
    coordinate_system
        Coordinate system shared by image and spots.
    microns_per_pixel
        µm per unit of the coordinate system (``None`` only when resolved with ``require_scale=False``).
    levels
        Pyramid levels of the image, finest first.
    """

    sdata: SpatialData
    name: str
    elements: SpotElements | None
    image_key: str
    coordinate_system: str
    microns_per_pixel: float | None
    levels: list[ImageLevel]

    @classmethod
    def resolve(
        cls,
        sdata: SpatialData,
        *,
        name: str | None = None,
        image_key: str | None = None,
        shapes_key: str | None = None,
        table_key: str | None = None,
        coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
        microns_per_pixel: float | None = None,
        spots: bool = True,
        require_scale: bool = True,
    ) -> Section:
        """Resolve elements, physical scale and pyramid levels, with clear errors when any is missing.

        With ``spots=False`` only the image is resolved (dense prediction over tiles). With
        ``require_scale=False`` an unknown physical scale is left as ``None`` (plots without a scale bar).
        A section resolved already (by a caller that knows its name, e.g. the key of a dict of sections) is
        returned as it is.
        """
        from sthist._core._elements import _one_of

        if isinstance(sdata, Section):
            return sdata
        if spots:
            elements = resolve_elements(
                sdata,
                image_key=image_key,
                shapes_key=shapes_key,
                table_key=table_key,
                coordinate_system=coordinate_system,
            )
            image_key = elements.image_key
            coordinate_system = elements.coordinate_system  # the shared one, for stores from other tools
        else:
            elements = None
            image_key = _one_of("image", list(sdata.images.keys()), image_key, "image_key")
        if image_key is None:  # resolve_elements always names the image when it is required
            raise ValueError("The section has no image.")
        scale: float | None
        try:
            scale = get_microns_per_pixel(
                sdata, coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel
            )
        except ValueError:
            scale = (
                visium_scale(sdata, elements) if elements is not None and microns_per_pixel is None else None
            )
            if scale is None and (require_scale or microns_per_pixel is not None):
                raise
        levels = image_levels(
            sdata.images[image_key], coordinate_system=coordinate_system, image_key=image_key
        )
        if name is None:
            name = sdata.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.SECTION, "section0")
        return cls(sdata, str(name), elements, image_key, coordinate_system, scale, levels)

    @property
    def spots(self) -> SpotElements:
        """Names of image, spots and table (an error for a section resolved without spots)."""
        if self.elements is None:
            raise ValueError(f"Section {self.name!r} was resolved without spots.")
        return self.elements

    @property
    def scale(self) -> float:
        """µm per unit of the coordinate system (an error says how to record it when unknown)."""
        if self.microns_per_pixel is None:
            return get_microns_per_pixel(self.sdata, coordinate_system=self.coordinate_system)
        return self.microns_per_pixel

    @cached_property
    def table(self) -> ad.AnnData:
        """Rows of the table that annotate the spots (a view when the table annotates several regions)."""
        elements = self.spots
        table = self.sdata.tables[elements.table_key]
        _, region_key, _ = table_region(table)
        in_region = np.asarray(table.obs[region_key] == elements.shapes_key)
        return table if in_region.all() else table[in_region]

    @cached_property
    def _instances(self) -> np.ndarray:
        _, _, instance_key = table_region(self.table)
        return self.table.obs[instance_key].to_numpy()

    @cached_property
    def centres(self) -> np.ndarray:
        """Spot centres (x, y) in the coordinate system, in table row order.

        Spots are circles (points with a radius) or polygons, e.g. the square bins of Visium HD or sthist's
        tiles, whose centroid is the centre.
        """
        from spatialdata.transformations import get_transformation

        elements = self.spots
        shapes = self.sdata.shapes[elements.shapes_key]
        geometry = shapes.geometry.loc[self._instances]
        kinds = set(geometry.geom_type)
        if kinds <= {"Point"}:
            x, y = geometry.x.to_numpy(), geometry.y.to_numpy()
        elif kinds <= {"Polygon", "MultiPolygon"}:
            centroids = geometry.centroid
            x, y = centroids.x.to_numpy(), centroids.y.to_numpy()
        else:
            raise ValueError(
                f"Shapes {elements.shapes_key!r} must be circles (points with a radius) or polygons; found "
                f"{sorted(kinds)}."
            )
        xy = np.c_[x, y, np.ones(len(geometry))]
        affine = get_transformation(shapes, to_coordinate_system=self.coordinate_system).to_affine_matrix(
            input_axes=("x", "y"), output_axes=("x", "y")
        )
        return (xy @ affine.T)[:, :2]

    @property
    def radii(self) -> np.ndarray:
        """Spot radii in coordinate-system units, in table row order (polygons: the disc of equal area)."""
        elements = self.spots
        shapes = self.sdata.shapes[elements.shapes_key]
        if "radius" in shapes.columns:
            return shapes["radius"].loc[self._instances].to_numpy(dtype=float)
        geometry = shapes.geometry.loc[self._instances]
        if set(geometry.geom_type) <= {"Polygon", "MultiPolygon"}:
            from spatialdata.transformations import get_transformation

            affine = get_transformation(shapes, to_coordinate_system=self.coordinate_system).to_affine_matrix(
                input_axes=("x", "y"), output_axes=("x", "y")
            )
            area_scale = abs(np.linalg.det(affine[:2, :2]))
            return np.sqrt(geometry.area.to_numpy(dtype=float) * area_scale / np.pi)
        raise ValueError(f"Shapes {elements.shapes_key!r} have no 'radius' column; pass spot_diameter_um=.")

    def level_for(self, target_microns_per_pixel: float, *, slack: float = 1.0) -> ImageLevel:
        """The coarsest pyramid level at least as fine as the target resolution (µm/px)."""
        return coarsest_level(self.levels, self.scale, target_microns_per_pixel, slack=slack)

    def patch_geometry(self, patch: PatchConfig, *, level: int | None = None) -> PatchGeometry:
        """Where each spot's patch lies in the pyramid level the patch resolution needs.

        By default the coarsest level at least as fine as ``patch.size_um / patch.size_px`` µm/px (10 %
        slack); ``level`` forces one (0 = full resolution).
        """
        if level is None:
            chosen = self.level_for(patch.microns_per_pixel, slack=1.1)
        elif not 0 <= level < len(self.levels):
            raise ValueError(f"level must be between 0 and {len(self.levels) - 1}, got {level}.")
        else:
            chosen = self.levels[level]
        warn_missing_chunks(chosen, self.image_key)
        scale = self.scale
        return PatchGeometry(
            level=chosen,
            level_microns_per_pixel=(chosen.pixel_size[0] * scale, chosen.pixel_size[1] * scale),
            patch_size_um=patch.size_um,
            patch_size_px=patch.size_px,
            centres=to_pixels(chosen, self.centres),
            obs_names=self.table.obs_names.to_numpy(),
        )

    @cached_property
    def _low_resolution(self) -> tuple[ImageLevel, np.ndarray]:
        """The level of about 16 µm/px and its pixels (h, w, 3), read once for the tissue mask and the stain."""
        level = self.level_for(TISSUE_MASK_MICRONS_PER_PIXEL)
        return level, level_pixels(level)

    @cached_property
    def tissue(self) -> tuple[ImageLevel, np.ndarray]:
        """The low-resolution level (about 16 µm/px) and its boolean tissue mask."""
        level, rgb = self._low_resolution
        if self.scale is None:
            return level, tissue_mask(rgb)
        return level, tissue_mask(rgb, microns_per_pixel=float(max(level.pixel_size)) * self.scale)

    @cached_property
    def stain(self) -> StainStats:
        """Stain statistics (lαβ mean and deviation) of the tissue pixels at low resolution."""
        _, mask = self.tissue
        return stain_stats(self._low_resolution[1], mask)

    def tissue_fraction(self, *, spot_diameter_um: float | None = None) -> pd.Series:
        """Fraction of each spot's disc that the tissue mask covers (indexed by table ``obs_names``).

        The disc is the spot's own radius (from the shapes) unless ``spot_diameter_um`` is given.
        """
        level, mask = self.tissue
        centres = to_pixels(level, self.centres)
        if spot_diameter_um is not None:
            radii_system = np.full(len(centres), spot_diameter_um / 2 / self.scale)
        else:
            radii_system = self.radii
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
        return pd.Series(fractions, index=self.table.obs_names, name=Key.obs.QC_TISSUE_FRACTION)

    def with_spots(self, sdata: SpatialData, *, shapes_key: str, table_key: str) -> Section:
        """The same image, scale and pyramid with other spots (e.g. tiles) held by ``sdata``."""
        elements = SpotElements(self.image_key, shapes_key, table_key, self.coordinate_system)
        return dataclasses.replace(self, sdata=sdata, elements=elements)

    def with_table(self, table: ad.AnnData) -> Section:
        """The same section with its table replaced in a new SpatialData object (the original is untouched)."""
        from spatialdata import SpatialData

        elements = self.spots
        sdata = SpatialData(
            images=dict(self.sdata.images),
            shapes=dict(self.sdata.shapes),
            tables={elements.table_key: table},
            attrs=self.sdata.attrs,
        )
        return dataclasses.replace(self, sdata=sdata)


#: Diameter of a Visium spot (µm), by which the scale of a Visium store follows from its scale factors.
VISIUM_SPOT_DIAMETER_UM = 65.0


def visium_scale(sdata, elements: SpotElements) -> float | None:
    """µm per unit of a Visium store that recorded no scale; ``None`` for anything else.

    A table with ``array_row``/``array_col`` and scanpy's ``uns['spatial']``, annotating circles that are
    untransformed in the coordinate system, is Visium as spatialdata-io writes it: the circles' diameter is
    Space Ranger's ``spot_diameter_fullres``, which is 65 µm (taken from the scale factors in ``uns`` when
    they are kept there).
    """
    from spatialdata.transformations import Identity, get_transformation

    from sthist._logging import logger

    table = sdata.tables[elements.table_key]
    libraries = table.uns.get("spatial")
    if not isinstance(libraries, dict) or not {"array_row", "array_col"} <= set(table.obs.columns):
        return None
    shapes = sdata.shapes[elements.shapes_key]
    placed = get_transformation(shapes, to_coordinate_system=elements.coordinate_system)
    if not isinstance(placed, Identity):
        return None
    diameters = {
        float(library["scalefactors"]["spot_diameter_fullres"])
        for library in libraries.values()
        if isinstance(library, dict) and "spot_diameter_fullres" in library.get("scalefactors", {})
    }
    if not diameters and "radius" in shapes.columns and len(shapes):
        radii = shapes["radius"].to_numpy(dtype=float)
        if np.allclose(radii, radii[0]) and radii[0] > 0:
            diameters = {2 * float(radii[0])}
    if len(diameters) != 1:
        return None
    scale = VISIUM_SPOT_DIAMETER_UM / diameters.pop()
    logger.info(
        "scale of %r from the Visium spot diameter: %.4f µm/px (65 µm)", elements.coordinate_system, scale
    )
    return scale


def resolve_sections(sdatas, **element_keys) -> dict[str, Section]:
    """Resolve one SpatialData object, a list or a dict of them (or of Sections) into Sections keyed by name.

    Names come from the dict keys, else from ``attrs['sthist']['section']``, else ``section<i>``.
    """
    from collections.abc import Mapping, Sequence

    if isinstance(sdatas, Section) or hasattr(sdatas, "tables"):
        items = [(None, sdatas)]
    elif isinstance(sdatas, Mapping):
        items = list(sdatas.items())
    elif isinstance(sdatas, Sequence) and not isinstance(sdatas, str):
        items = [(None, s) for s in sdatas]
    else:
        raise TypeError(f"Expected a SpatialData object, or a list or dict of them; got {type(sdatas)}.")
    if not items:
        raise ValueError("No sections given.")
    sections: dict[str, Section] = {}
    for index, (name, item) in enumerate(items):
        if isinstance(item, Section):
            section = item if name is None else dataclasses.replace(item, name=str(name))
        else:
            if name is None:
                default = "section0" if len(items) == 1 else f"section{index}"
                name = item.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.SECTION, default)
                if name in sections:
                    name = f"{name}_{index}"
            section = Section.resolve(item, name=name, **element_keys)
        sections[section.name] = section
    return sections
