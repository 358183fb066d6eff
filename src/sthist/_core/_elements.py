"""Resolve which image, spots (shapes) and table of a SpatialData object a function works on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._image import full_resolution

if TYPE_CHECKING:
    import anndata as ad
    from spatialdata import SpatialData


@dataclass(frozen=True)
class SpotElements:
    """Names of the elements that make one section: H&E image, spots and the table annotating them."""

    image_key: str | None
    shapes_key: str
    table_key: str
    coordinate_system: str


def _one_of(kind: str, available: list[str], requested: str | None, argument: str) -> str:
    if requested is not None:
        if requested not in available:
            raise KeyError(f"No {kind} named {requested!r}; available {kind}s: {sorted(available)}.")
        return requested
    if len(available) == 0:
        raise ValueError(f"The SpatialData object has no {kind}.")
    if len(available) > 1:
        raise ValueError(f"Several {kind}s are present ({sorted(available)}); choose one with `{argument}=`.")
    return available[0]


def _shared_system(sdata, shapes, image_key: str | None) -> str | None:
    """The coordinate system spots and image share, when the default one is absent (stores from other tools).

    Among the shared systems, the one in which the spots are untransformed (their own full-resolution pixels,
    as spatialdata-io writes Visium) is preferred; ``None`` when there is no single choice.
    """
    from spatialdata.transformations import Identity, get_transformation

    systems = get_transformation(shapes, get_all=True)
    if image_key is not None:
        image_systems = get_transformation(full_resolution(sdata.images[image_key]), get_all=True)
        systems = {name: t for name, t in systems.items() if name in image_systems}
    if len(systems) == 1:
        return next(iter(systems))
    identity = [name for name, t in systems.items() if isinstance(t, Identity)]
    return identity[0] if len(identity) == 1 else None


def table_region(table: ad.AnnData) -> tuple[list[str], str, str]:
    """Return (regions, region_key, instance_key) of a SpatialData table."""
    from spatialdata.models import get_table_keys

    try:
        region, region_key, instance_key = get_table_keys(table)
    except ValueError:
        raise ValueError(
            "The table does not annotate any element (no `uns['spatialdata_attrs']`); "
            "parse it with `spatialdata.models.TableModel.parse(adata, region=..., region_key=..., "
            "instance_key=...)`."
        ) from None
    regions = [region] if isinstance(region, str) else list(region)
    return regions, region_key, instance_key


def resolve_elements(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    require_image: bool = True,
) -> SpotElements:
    """Find the image, spots and table to use, with clear errors when missing or ambiguous.

    The table must annotate the spots (``spatialdata_attrs['region']``) and every annotated instance must
    exist among the spots. Image and spots must both be placed in ``coordinate_system``. Among several images,
    the one a reader recorded in ``attrs['sthist']['image_key']`` is used unless ``image_key`` names another.
    """
    from spatialdata.transformations import get_transformation

    if table_key is None:
        # Tables of sthist's own tile predictions are results, and tile-level feature tables that spots read
        # features from are inputs, not sections' spots: both are left out of the choice.
        sources = {
            str(source)
            for table in sdata.tables.values()
            for source in dict(table.uns.get(Key.uns.FEATURE_SOURCES, {})).values()
        }
        spots_tables = [
            name for name, table in sdata.tables.items() if not is_tiles_table(table) and name not in sources
        ]
        if len(spots_tables) == 1:
            table_key = spots_tables[0]
    table_key = _one_of("table", list(sdata.tables.keys()), table_key, "table_key")
    table = sdata.tables[table_key]
    regions, region_key, instance_key = table_region(table)
    annotated_shapes = [r for r in regions if r in sdata.shapes]
    if not annotated_shapes:
        raise ValueError(
            f"Table {table_key!r} annotates {regions}, but none of these is a shapes element of spots "
            f"(shapes present: {sorted(sdata.shapes.keys())})."
        )
    if shapes_key is None:
        shapes_key = _one_of("annotated shapes element", annotated_shapes, None, "shapes_key")
    elif shapes_key not in annotated_shapes:
        raise KeyError(
            f"Table {table_key!r} does not annotate shapes {shapes_key!r}; it annotates {regions}. "
            f"Shapes present: {sorted(sdata.shapes.keys())}."
        )
    shapes = sdata.shapes[shapes_key]
    in_region = np.asarray(table.obs[region_key] == shapes_key)
    instances = table.obs[instance_key].to_numpy()[in_region]
    if in_region.sum() == 0:
        raise ValueError(f"Table {table_key!r} has no row for shapes {shapes_key!r}: the section is empty.")
    missing = ~np.isin(instances, shapes.index.to_numpy())
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {len(instances)} rows of table {table_key!r} name spots that shapes "
            f"{shapes_key!r} does not contain (e.g. {instances[missing][:3].tolist()}); the table does not "
            "annotate these spots."
        )
    if require_image:
        recorded = sdata.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.IMAGE)
        if image_key is None and recorded in sdata.images:
            image_key = recorded  # the reader's choice among several images (the finest H&E)
        image_key = _one_of("image", list(sdata.images.keys()), image_key, "image_key")
    shape_systems = get_transformation(shapes, get_all=True)
    if coordinate_system not in shape_systems and coordinate_system == DEFAULT_COORDINATE_SYSTEM:
        coordinate_system = (
            _shared_system(sdata, shapes, image_key if require_image else None) or coordinate_system
        )
    if coordinate_system not in shape_systems:
        raise ValueError(
            f"Shapes {shapes_key!r} are not placed in coordinate system {coordinate_system!r}; "
            f"available: {sorted(shape_systems)}."
        )

    if require_image:
        image_systems = get_transformation(full_resolution(sdata.images[image_key]), get_all=True)
        if coordinate_system not in image_systems:
            raise ValueError(
                f"Image {image_key!r} is not placed in coordinate system {coordinate_system!r}; "
                f"available: {sorted(image_systems)}."
            )
    elif image_key is not None and image_key not in sdata.images:
        raise KeyError(f"No image named {image_key!r}; available images: {sorted(sdata.images.keys())}.")
    return SpotElements(image_key, shapes_key, table_key, coordinate_system)


def is_tiles_table(table) -> bool:
    """Whether a table holds tile predictions written by :func:`sthist.tl.predict_tiles`."""
    return any(isinstance(value, dict) and "tile_size_um" in value for value in table.uns.values())


def table_holding(sdata, table_key: str | None, *, obsm_key: str | None = None, uns_key: str | None = None):
    """The key of the table to plot: ``table_key`` if given, the only table, or the only one holding the results.

    After ``tl.predict_tiles`` a section has two tables (spots and tiles); the spot predictions live in one.
    """
    tables = list(sdata.tables)
    if table_key is not None:
        if table_key not in tables:
            raise KeyError(f"No table named {table_key!r}; available: {sorted(tables)}.")
        return table_key
    if len(tables) == 1:
        return tables[0]
    holding = [
        name
        for name in tables
        if (obsm_key is not None and obsm_key in sdata.tables[name].obsm)
        or (uns_key is not None and uns_key in sdata.tables[name].uns)
    ]
    if len(holding) == 1:
        return holding[0]
    raise ValueError(f"Several tables ({sorted(tables)}); choose one with table_key=.")


def as_table(data, table_key: str | None = None, *, obsm_key: str | None = None, uns_key: str | None = None):
    """The AnnData table of ``data``: ``data`` itself, or the table of a SpatialData object.

    For a SpatialData object: ``table_key`` if given, the only table, or the only one holding ``obsm_key``
    / ``uns_key`` (see :func:`table_holding`). Anything else is refused with a TypeError.
    """
    import anndata as ad

    if isinstance(data, ad.AnnData):
        return data
    if not hasattr(data, "tables"):
        raise TypeError(f"Expected an AnnData table or a SpatialData object, got {type(data)}.")
    return data.tables[table_holding(data, table_key, obsm_key=obsm_key, uns_key=uns_key)]
