"""``sthist.tl.predict_tiles``: dense prediction over the tissue of a whole section, memory bounded by a batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._checks import check_batch_memory, check_device, check_key_name, check_positive_integer
from sthist._core._docs import doc_params
from sthist._core._image import to_pixels
from sthist._core._section import Section
from sthist._logging import logger
from sthist._settings import apply_runtime_settings, settings
from sthist.tl._prediction import check_trained_model, domain_check, predict_patches

if TYPE_CHECKING:
    from spatialdata import SpatialData


@doc_params
def tile_grid(
    sdata: SpatialData,
    *,
    tile_size_um: float,
    stride_um: float,
    min_tissue_fraction: float = 0.5,
    image_key: str | None = None,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
    bounds: tuple[float, float, float, float] | None = None,
) -> pd.DataFrame:
    """Centres (coordinate-system units) of square tiles over the tissue of a section's image.

    The tissue mask is computed on a low-resolution pyramid level (about 16 µm/px); a tile is kept when
    at least ``min_tissue_fraction`` of its square is tissue and it lies entirely inside the image.
    ``bounds`` = ``(x_min, y_min, x_max, y_max)`` in coordinate-system units keeps only tiles whose centre
    lies inside (for images that carry labels, rulers or thumbnails beside the section).

    Parameters
    ----------
    sdata
        Section with an H&E image.
    tile_size_um
        Side of a tile in µm.
    stride_um
        Distance between tile centres in µm.
    min_tissue_fraction
        Keep a tile when at least this fraction (0-1) of its square is tissue.
    {image_key}
    {coordinate_system}
    {microns_per_pixel}
    bounds
        ``(x_min, y_min, x_max, y_max)`` in coordinate-system units: keep tiles whose centre lies inside.

    Returns
    -------
    A DataFrame with ``x``, ``y`` (tile centres, coordinate-system units) and ``tissue_fraction``.

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.toy(1)["toy0"]
    >>> grid = sthist.tl.tile_grid(sdata, tile_size_um=112, stride_um=112)
    >>> list(grid.columns), bool((grid["tissue_fraction"] >= 0.5).all())
    (['x', 'y', 'tissue_fraction'], True)
    """
    section = Section.resolve(
        sdata, image_key=image_key, coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel,
        spots=False,
    )  # fmt: skip
    return _tile_grid(section, tile_size_um, stride_um, min_tissue_fraction, bounds)


#: Default limit on the tiles of one call of predict_tiles (a 2 cm × 1.5 cm section at a 112 µm stride has
#: about 24,000); more must be asked for with ``max_tiles``.
MAX_TILES = 250_000
#: Candidate grid points (before the tissue mask) that fit in about 1 GiB of working memory.
MAX_GRID_POINTS = 20_000_000


def _tile_grid(
    section: Section, tile_size_um, stride_um, min_tissue_fraction, bounds, max_tiles: int | None = None
) -> pd.DataFrame:
    if not np.isfinite(tile_size_um) or tile_size_um <= 0 or not np.isfinite(stride_um) or stride_um <= 0:
        raise ValueError("tile_size_um and stride_um must be positive numbers of µm.")
    if not 0 <= min_tissue_fraction <= 1:
        raise ValueError(f"min_tissue_fraction must lie in [0, 1], got {min_tissue_fraction!r}.")
    if bounds is not None:
        values = np.asarray(bounds, dtype=float)
        if (
            values.shape != (4,)
            or not np.isfinite(values).all()
            or not (values[0] < values[2] and values[1] < values[3])
        ):
            raise ValueError(
                f"bounds must be (x_min, y_min, x_max, y_max) with x_min < x_max and y_min < y_max, got {bounds!r}."
            )
    scale = section.scale
    full = section.levels[0]
    height, width = full.shape
    # Image extent in coordinate-system units (axis-aligned: scale and translation).
    corners = np.array([[0.0, 0.0], [width, height]])
    to_system = np.linalg.inv(full.to_pixels)
    extent = (np.c_[corners, np.ones(2)] @ to_system.T)[:, :2]
    tile, stride = tile_size_um / scale, stride_um / scale
    span = extent[1] - extent[0] - tile
    candidates = float(np.prod(np.floor(np.maximum(span, 0) / stride) + 1))
    if max_tiles is not None and bounds is None:
        # The tissue covers part of the image at most: if the whole grid is far beyond the limit, stop now.
        if candidates > 20 * max_tiles:
            raise ValueError(
                f"stride_um={stride_um:g} lays {candidates:,.0f} tiles over the image (at most "
                f"{max_tiles:,} are predicted per call); use a larger stride_um, restrict the area with bounds=, "
                "or raise max_tiles."
            )
    if candidates > MAX_GRID_POINTS:
        raise ValueError(
            f"stride_um={stride_um:g} lays {candidates:,.0f} tiles over the image, more than "
            f"{MAX_GRID_POINTS:,} can be screened for tissue at once; use a larger stride_um or bounds=."
        )
    xs = np.arange(extent[0, 0] + tile / 2, extent[1, 0] - tile / 2 + 1e-9, stride)
    ys = np.arange(extent[0, 1] + tile / 2, extent[1, 1] - tile / 2 + 1e-9, stride)
    if len(xs) == 0 or len(ys) == 0:
        raise ValueError(f"The image is smaller than one {tile_size_um:g} µm tile.")
    centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    level, mask = section.tissue
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    centre_px = to_pixels(level, centres)
    half = tile / np.asarray(level.pixel_size) / 2
    x0 = np.clip(np.round(centre_px[:, 0] - half[0]).astype(int), 0, mask.shape[1])
    x1 = np.clip(np.round(centre_px[:, 0] + half[0]).astype(int), 0, mask.shape[1])
    y0 = np.clip(np.round(centre_px[:, 1] - half[1]).astype(int), 0, mask.shape[0])
    y1 = np.clip(np.round(centre_px[:, 1] + half[1]).astype(int), 0, mask.shape[0])
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    fraction = covered / area
    keep = fraction >= min_tissue_fraction
    if bounds is not None:
        x_min, y_min, x_max, y_max = bounds
        inside = (centres[:, 0] >= x_min) & (centres[:, 0] <= x_max)
        keep &= inside & (centres[:, 1] >= y_min) & (centres[:, 1] <= y_max)
    logger.info("%d of %d tiles lie on tissue", int(keep.sum()), len(centres))
    if max_tiles is not None and keep.sum() > max_tiles:
        raise ValueError(
            f"stride_um={stride_um:g} gives {int(keep.sum()):,} tiles on tissue, more than max_tiles={max_tiles:,} "
            "(each tile is one encoder pass); use a larger stride_um, restrict the area with bounds=, or raise "
            "max_tiles (None: no limit)."
        )
    return pd.DataFrame(
        {"x": centres[keep, 0], "y": centres[keep, 1], Key.obs.TISSUE_FRACTION: fraction[keep]}
    )


@doc_params
def predict_tiles(
    sdata: SpatialData,
    model,
    *,
    image_key: str | None = None,
    stride_um: float | None = None,
    min_tissue_fraction: float = 0.5,
    key_added: str = Key.shapes.TILES,
    batch_size: int = 16,
    chunk_tiles: int = 512,
    device: str = "auto",
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    max_tiles: int | None = MAX_TILES,
    token_cache=None,
    overwrite: bool = False,
) -> None:
    """Predict expression on a grid of tiles over the tissue of a section (no measured spots needed).

    Tiles are squares of the model's patch size (µm) every ``stride_um`` µm, kept where the low-resolution
    tissue mask covers at least ``min_tissue_fraction`` of them. Patches are read lazily by chunks from the
    pyramid level the model's resolution needs, and tiles are encoded and predicted ``chunk_tiles`` at a
    time, so memory is bounded by the batch, not by the slide (the encoder's activations for ``batch_size``
    patches dominate: about 0.3 GiB for EfficientNet-Lite0 at 16 patches of 224 px). ``bounds`` restricts the
    tiles to a rectangle of the coordinate system (see :func:`tile_grid`).

    Parameters
    ----------
    sdata
        Section with an H&E image (spots and tables are not needed).
    model
        A trained :class:`sthist.models.SthistModel`.
    {image_key}
    stride_um
        Distance between tile centres in µm (default: the model's patch size, tiles side by side).
    min_tissue_fraction
        Keep a tile when at least this fraction (0-1) of its square is tissue.
    key_added
        Name of the tiles' shapes; their table is ``key_added + '_table'``.
    batch_size
        Patches encoded at a time.
    chunk_tiles
        Tiles read, encoded and predicted per step (bounds memory).
    device
        Torch device of the encoder: ``'auto'`` (a GPU when torch sees one, else the CPU), ``'cpu'``,
        ``'cuda'``, ``'cuda:1'``.
    {coordinate_system}
    {microns_per_pixel}
    bounds
        ``(x_min, y_min, x_max, y_max)`` in coordinate-system units: keep tiles whose centre lies inside.
    max_tiles
        Refuse, before any encoding, a grid of more tiles on tissue than this (about 250,000 by default:
        a stride of a few µm would otherwise ask for millions of encoder passes); ``None`` lifts the limit.
    token_cache
        A :class:`sthist.data.TokenCache` with a folder: each chunk of tiles is read from it when any process
        encoded the same pixels with the same encoder before, and written to it when encoded here (predict
        other genes, another model on the same encoder, or the same slide again without encoding). Chunks are
        never held in memory; a cache without a folder changes nothing.
    {overwrite}

    Returns
    -------
    ``None``; writes into ``sdata``:

    - ``shapes[key_added]``: one square per tile (a polygon of side ``stride_um`` µm, so that the squares tile
      the section and spatialdata-plot draws them as tiles), centred on the tile;
    - ``tables[key_added + '_table']``: a table annotating those shapes: ``X`` = predicted expression (tiles × genes,
      log1p units), ``layers['uncertainty']`` = spread over the retrieved neighbours, ``obs`` with
      ``tissue_fraction``, ``obsm['spatial']`` = centres, ``var['reliability']`` = the model's per-gene
      cross-validated Pearson r when recorded, ``var['unreliable']`` = genes the model cannot predict,
      ``uns[key_added]`` = provenance. Ready for scanpy (clustering, plotting).

    When ``sdata`` is backed by a zarr store (``sdata.path``), both elements are also written to it,
    each atomically (see :func:`sthist.io.write_elements`).

    Examples
    --------
    ``model`` was fitted with :func:`sthist.tl.fit` on a section other than ``sections["toy1"]``:

    >>> sthist.tl.predict_tiles(sections["toy1"], model, stride_um=128)
    >>> tiles = sections["toy1"].tables["sthist_tiles_table"]
    >>> tiles.n_vars == len(model.genes) and "uncertainty" in tiles.layers
    True
    """
    from tqdm import tqdm

    from sthist.data import SpotPatchDataset

    check_trained_model(model)
    check_key_name(key_added)
    for value, name in ((batch_size, "batch_size"), (chunk_tiles, "chunk_tiles"), (max_tiles, "max_tiles")):
        if value is not None:
            check_positive_integer(value, name)
    device = check_device(device)
    check_batch_memory(batch_size, model.patch.size_px, device)
    apply_runtime_settings()
    tile_size_um = model.patch.size_um
    stride_um = tile_size_um if stride_um is None else float(stride_um)
    _check_tiles_target(sdata, key_added, overwrite)
    section = Section.resolve(
        sdata, image_key=image_key, coordinate_system=coordinate_system, microns_per_pixel=microns_per_pixel,
        spots=False,
    )  # fmt: skip
    grid = _tile_grid(section, tile_size_um, stride_um, min_tissue_fraction, bounds, max_tiles)
    if grid.empty:
        raise ValueError("No tile lies on tissue; lower min_tissue_fraction or check the image.")
    shapes, placeholder = _tile_elements(grid, stride_um / section.scale, key_added, coordinate_system)
    # The tiles are the spots of a section that shares the resolved image, scale and pyramid.
    tiles = section.with_spots(
        _tiles_view(sdata, section.image_key, shapes, placeholder, key_added),
        shapes_key=key_added, table_key=Key.tables.tiles(key_added),
    )  # fmt: skip
    dataset = SpotPatchDataset(
        tiles, patch_size_um=tile_size_um, patch_size_px=model.patch.size_px, in_memory=False,
        stain_reference=model.stain_reference,
    )  # fmt: skip
    domain = domain_check(tiles, model, dataset.geometry(tiles.name))
    n_tiles = len(grid)
    order = placeholder.obs_names.get_indexer(dataset.spots["obs_name"])
    centres_um = tiles.centres[dataset.spots["row"].to_numpy()] * tiles.scale
    with tqdm(total=n_tiles, desc="predicting tiles", unit="tile", disable=not settings.progress) as progress:
        mean, spread = predict_patches(
            model,
            dataset,
            centres_um,
            batch_size=batch_size,
            device=device,
            chunk=chunk_tiles,
            token_cache=token_cache,
            progress=progress,
        )
    prediction = np.full((n_tiles, len(model.genes)), np.nan, dtype=np.float32)
    deviation = np.full_like(prediction, np.nan)
    prediction[order], deviation[order] = mean, spread
    table = _tiles_table(model, grid, placeholder.obs, prediction, deviation, key_added)
    table.uns[key_added] = {
        "method": model.method,
        "retrieval_weight": model.retrieval_weight,
        "tile_size_um": tile_size_um,
        "stride_um": stride_um,
        "min_tissue_fraction": float(min_tissue_fraction),
        "units": model.config.normalization.unit_label,
        "image_key": section.image_key,
        "domain": domain,
    }
    _write_tiles(sdata, shapes, table, key_added, overwrite=overwrite)


def _check_tiles_target(sdata, key_added: str, overwrite: bool) -> None:
    """Refuse to replace elements unasked, or elements predict_tiles did not write; a store must be writable."""
    table_key = Key.tables.tiles(key_added)
    _check_tiles_key(sdata, key_added)
    if sdata.path is not None:
        from sthist.io import check_writable

        check_writable(sdata.path)
    existing = [f"shapes[{key_added!r}]" for _ in [0] if key_added in sdata.shapes] + [
        f"tables[{table_key!r}]" for _ in [0] if table_key in sdata.tables
    ]
    if existing and not overwrite:
        raise ValueError(f"{existing} exist already; pass overwrite=True or another key_added.")


def _tile_elements(grid: pd.DataFrame, side: float, key_added: str, coordinate_system: str):
    """The tiles' shapes (squares of ``side`` coordinate units) and a placeholder table annotating them."""
    import anndata as ad
    import geopandas as gpd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n_tiles = len(grid)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            geometry=_squares(grid["x"].to_numpy(), grid["y"].to_numpy(), side),
            index=pd.Index(np.arange(n_tiles), name=Key.obs.INSTANCE),
        ),
        transformations={coordinate_system: Identity()},
    )
    obs = pd.DataFrame(
        {
            Key.obs.TISSUE_FRACTION: grid[Key.obs.TISSUE_FRACTION].to_numpy(),
            Key.obs.REGION: pd.Categorical([key_added] * n_tiles),
            Key.obs.INSTANCE: np.arange(n_tiles),
        },
        index=pd.Index([f"tile{i}" for i in range(n_tiles)], name="tile"),
    )
    placeholder = TableModel.parse(
        ad.AnnData(obs=obs), region=key_added, region_key=Key.obs.REGION, instance_key=Key.obs.INSTANCE
    )
    return shapes, placeholder


def _tiles_view(sdata, image_key: str, shapes, placeholder, key_added: str):
    """A SpatialData object of the section's image and the tiles, which patches are read through."""
    from spatialdata import SpatialData

    return SpatialData(
        images={image_key: sdata.images[image_key]}, shapes={key_added: shapes},
        tables={Key.tables.tiles(key_added): placeholder}, attrs=sdata.attrs,
    )  # fmt: skip


def _tiles_table(model, grid: pd.DataFrame, obs: pd.DataFrame, prediction, spread, key_added: str):
    """The table of the tiles: predictions in ``X``, spread in a layer, reliability per gene, centres."""
    import anndata as ad
    from spatialdata.models import TableModel

    genes = model.genes
    var = pd.DataFrame(index=pd.Index(genes, name="gene"))
    reliability = model.config.reliability
    if reliability is not None:
        var[Key.var.RELIABILITY] = [
            np.nan if reliability.genes.get(g) is None else reliability.genes[g] for g in genes
        ]
        var[Key.var.UNRELIABLE] = var.index.isin(model.unreliable_genes)
    table = ad.AnnData(X=prediction, obs=obs, var=var, layers={Key.layers.UNCERTAINTY: spread})
    table.obsm[Key.obsm.SPATIAL] = grid[["x", "y"]].to_numpy()
    return TableModel.parse(table, region=key_added, region_key=Key.obs.REGION, instance_key=Key.obs.INSTANCE)


def _write_tiles(sdata, shapes, table, key_added: str, *, overwrite: bool) -> None:
    """Put the tiles' shapes and table into ``sdata`` and, when it is backed by a store, into the store."""
    table_key = Key.tables.tiles(key_added)
    if table_key in sdata.tables:
        del sdata.tables[table_key]
    if key_added in sdata.shapes:
        del sdata.shapes[key_added]
    sdata.shapes[key_added] = shapes
    sdata.tables[table_key] = table
    logger.info(
        "added shapes[%r] and tables[%r] (%d tiles × %d genes)",
        key_added,
        table_key,
        table.n_obs,
        table.n_vars,
    )
    if sdata.path is not None:
        from sthist.io import write_elements

        write_elements(sdata, [("shapes", key_added), ("tables", table_key)], overwrite=overwrite)


def _check_tiles_key(sdata, key: str) -> None:
    """Refuse a tiles ``key_added`` naming an element that predict_tiles did not write, whatever ``overwrite``."""
    table_key = Key.tables.tiles(key)
    owned = table_key in sdata.tables and "tile_size_um" in (sdata.tables[table_key].uns.get(key) or {})
    others = [
        f"{kind}[{name!r}]"
        for kind in ("images", "labels", "points", "shapes", "tables")
        for name in getattr(sdata, kind)
        if name in (key, table_key) and not (owned and kind in ("shapes", "tables"))
    ]
    if others:
        raise ValueError(
            f"key_added={key!r} would replace {others}, which sthist.tl.predict_tiles did not write; choose another "
            "key_added (nothing is replaced even with overwrite=True)."
        )


def _squares(x: np.ndarray, y: np.ndarray, side: float):
    """Axis-aligned squares of ``side`` centred on (x, y): tiles that spatialdata-plot draws as tiles."""
    import shapely

    half = side / 2
    corners = np.stack(
        [
            np.c_[x - half, y - half],
            np.c_[x + half, y - half],
            np.c_[x + half, y + half],
            np.c_[x - half, y + half],
        ],
        axis=1,
    )
    return shapely.polygons(corners)
