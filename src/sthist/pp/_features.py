"""Per-spot features from a tile-level feature table another tool computed (e.g. LazySlide, wsidata).

LazySlide's ``tl.feature_extraction`` writes one table per encoder and tiling (``tables['<model>_tiles']``:
``X`` = tiles × features, annotating the ``shapes['tiles']`` squares). :func:`spot_features_from_tiles` gives
each spot the features of the tile its centre lies in and keeps them in the spots' ``table.obsm``, declared
with the encoder that computed them, so that ``tl.fit(..., backbone="obsm:<key>")`` trains on them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._docs import doc_params
from sthist._core._section import Section

if TYPE_CHECKING:
    from spatialdata import SpatialData


@doc_params
def spot_features_from_tiles(
    sdata: SpatialData,
    tiles_table: str,
    *,
    key_added: str | None = None,
    encoder: str | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    overwrite: bool = False,
) -> int:
    """Give each spot the features of the tile its centre lies in, from a tile-level feature table.

    Tiles and spots are compared in ``coordinate_system`` (each element through its own transformation), so
    tiles drawn on the full-resolution slide and spots on a lower-resolution image of it line up. A spot
    whose centre lies in no tile (outside the tiled tissue) gets NaN features: leave such spots out with a
    ``qc_column`` when fitting or predicting, which otherwise refuse them by name.

    Parameters
    ----------
    sdata
        The section: its spots and table, and the tile squares (``shapes``) that ``tiles_table`` annotates.
    tiles_table
        Name of the table of tile features (tiles × features in ``X``), e.g. LazySlide's ``'uni_tiles'``.
    key_added
        ``obsm`` key of the spots' table to write (default: ``tiles_table``).
    encoder
        The encoder that computed the features, recorded in ``table.uns['sthist_features'][key_added]``
        (default: ``tiles_table``, which names the encoder in LazySlide's layout); a model trained on them
        refuses sections whose features declare another.
    {element_keys}
    {coordinate_system}
    {overwrite}

    Returns
    -------
    The number of spots that lie in no tile; writes ``table.obsm[key_added]`` (spots × features, float32),
    ``table.uns['sthist_features'][key_added]`` (the encoder) and
    ``table.uns['sthist_feature_sources'][key_added]`` (``tiles_table``) into the spots' table. Functions
    that find a section's table by themselves then leave ``tiles_table`` out of the choice.

    Examples
    --------
    >>> import sthist
    >>> sthist.pp.spot_features_from_tiles(sdata, "uni_tiles", table_key="table")  # doctest: +SKIP
    >>> model = sthist.tl.fit(sdata, method="ridge", backbone="obsm:uni_tiles")  # doctest: +SKIP
    """
    from scipy.spatial import cKDTree

    from sthist._core._elements import table_region

    key_added = tiles_table if key_added is None else key_added
    if tiles_table not in sdata.tables:
        raise KeyError(f"No table {tiles_table!r}; the tables are {sorted(sdata.tables)}.")
    regions, _, _ = table_region(sdata.tables[tiles_table])
    if len(regions) != 1 or regions[0] not in sdata.shapes:
        raise ValueError(
            f"Table {tiles_table!r} must annotate one shapes element of tiles; it annotates {regions}."
        )
    section = Section.resolve(
        sdata, image_key=image_key, shapes_key=shapes_key, table_key=table_key,
        coordinate_system=coordinate_system, require_scale=False,
    )  # fmt: skip
    if section.spots.table_key == tiles_table:
        raise ValueError(f"{tiles_table!r} is the table of the tiles; pass the spots' table as table_key.")
    table = sdata.tables[section.spots.table_key]
    if key_added in table.obsm and not overwrite:
        raise ValueError(
            f"table.obsm[{key_added!r}] exists already; pass overwrite=True to replace it, or another key_added."
        )
    tiles = section.with_spots(sdata, shapes_key=regions[0], table_key=tiles_table)
    centres, side = tiles.centres, _tile_side(sdata, regions[0], tiles)
    values = sdata.tables[tiles_table].X
    features = np.asarray(values.toarray() if hasattr(values, "toarray") else values, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(centres) or features.shape[1] == 0:
        raise ValueError(f"Table {tiles_table!r} must hold one row of features per tile in X.")
    # The tile whose square holds the spot's centre: nearest centre in the maximum norm, within half a side.
    distance, nearest = cKDTree(centres).query(
        section.centres, p=np.inf, distance_upper_bound=side / 2 * 1.0001
    )
    found = np.isfinite(distance)
    spot_features = np.full((len(section.centres), features.shape[1]), np.nan, dtype=np.float32)
    spot_features[found] = features[nearest[found]]
    rows = (
        np.arange(table.n_obs)
        if section.table is table
        else np.flatnonzero(table.obs_names.isin(section.table.obs_names))
    )
    full = np.full((table.n_obs, features.shape[1]), np.nan, dtype=np.float32)
    full[rows] = spot_features
    table.obsm[key_added] = full
    declared = dict(table.uns.get(Key.uns.FEATURES, {}))
    declared[key_added] = tiles_table if encoder is None else str(encoder)
    table.uns[Key.uns.FEATURES] = declared
    sources = dict(table.uns.get(Key.uns.FEATURE_SOURCES, {}))
    sources[key_added] = tiles_table  # the section's spots are then found without naming its table
    table.uns[Key.uns.FEATURE_SOURCES] = sources
    missing = int((~found).sum())
    if missing:
        warnings.warn(
            f"{missing} of {len(found)} spots lie in no tile of {tiles_table!r}: their features are NaN; leave "
            "them out with a qc_column (e.g. sthist.pp.qc_spots) or tile the whole tissue.",
            UserWarning,
            stacklevel=2,
        )
    return missing


def _tile_side(sdata: SpatialData, shapes_key: str, tiles: Section) -> float:
    """Median side of the tile squares in the coordinate system's units."""
    from spatialdata.transformations import get_transformation

    geometry = sdata.shapes[shapes_key].geometry
    if not set(geometry.geom_type) <= {"Polygon", "MultiPolygon"}:
        raise ValueError(
            f"The tiles of {shapes_key!r} must be polygons (squares), found {set(geometry.geom_type)}."
        )
    affine = get_transformation(sdata.shapes[shapes_key], to_coordinate_system=tiles.coordinate_system)
    matrix = affine.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))[:2, :2]
    return float(np.median(np.sqrt(geometry.area.to_numpy())) * np.sqrt(abs(np.linalg.det(matrix))))
