"""Sections from plain arrays (counts, spot pixel positions, an H&E image), for platforms without a reader."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._counts import check_raw_counts
from sthist._core._scale import checked_scale, set_microns_per_pixel

#: File endings read lazily, level by level, as (pyramidal) TIFFs.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ome.tif")


def _check_rgb_level(array, what: str) -> None:
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{what} must be an RGB array (height, width, 3), got shape {tuple(array.shape)}.")
    if array.dtype != np.uint8:
        raise ValueError(f"{what} must be 8-bit RGB (uint8), got {array.dtype}; convert it first.")


def _tiff_levels(path: Path) -> list:
    """The pyramid levels of a (pyramidal) TIFF as lazy dask arrays (height, width, 3), finest first."""
    import dask.array as da
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shapes = series.axes, [level.shape for level in series.levels]
    if axes != "YXS":
        raise ValueError(f"{path} holds a {axes} image; an RGB H&E image (axes YXS) is needed.")
    group: Any = zarr.open(tifffile.imread(path, aszarr=True, series=0), mode="r")
    if len(shapes) == 1 and not hasattr(group, "keys"):
        arrays = [group]
    else:
        arrays = [group[str(i)] for i in range(len(shapes))]
    return [da.from_zarr(array)[..., :3] for array in arrays]


def _read_image(image) -> list:
    """The image's levels (height, width, 3) uint8, finest first: numpy arrays, or lazy dask arrays."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {path}.")
        if path.name.lower().endswith(TIFF_SUFFIXES):
            levels = _tiff_levels(path)
        else:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as opened:
                levels = [np.asarray(opened.convert("RGB"))]
    elif isinstance(image, list | tuple):
        levels = list(image)
        if not levels:
            raise ValueError("image is an empty list; give the image or its pyramid levels, finest first.")
    else:
        levels = [image]
    levels = [level if hasattr(level, "dask") else np.asarray(level) for level in levels]
    for i, level in enumerate(levels):
        _check_rgb_level(level, "image" if len(levels) == 1 else f"image level {i}")
    finest = levels[0].shape[:2]
    for i, level in enumerate(levels[1:], start=1):
        if level.shape[0] > finest[0] or level.shape[1] > finest[1]:
            raise ValueError(f"image level {i} is larger than level 0; give the levels finest first.")
    return [
        level[..., :3] if hasattr(level, "dask") else np.ascontiguousarray(level[..., :3]) for level in levels
    ]


def _image_element(levels: list, transform, scale_factors: Sequence[int]):
    """An Image2DModel element: a given pyramid kept as it is (lazy), or one built from a single level."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale
    from spatialdata.transformations import Sequence as Chain
    from xarray import DataTree

    height, width = levels[0].shape[:2]
    if len(levels) == 1:
        factors = list(scale_factors)
        while factors and min(height, width) // int(np.prod(factors)) < 64:
            factors.pop()
        return Image2DModel.parse(
            levels[0].transpose(2, 0, 1), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
            scale_factors=factors or None, transformations={DEFAULT_COORDINATE_SYSTEM: transform},
            chunks=(3, 2048, 2048),
        )  # fmt: skip
    scales = {}
    for i, level in enumerate(levels):
        to_finest = Scale([height / level.shape[0], width / level.shape[1]], axes=("y", "x"))
        placed = Image2DModel.parse(
            level.transpose(2, 0, 1), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
            transformations={DEFAULT_COORDINATE_SYSTEM: transform if i == 0 else Chain([to_finest, transform])},
        )  # fmt: skip
        scales[f"scale{i}"] = placed.to_dataset(name="image")
    tree = DataTree.from_dict(scales)
    Image2DModel().validate(tree)
    return tree


def from_arrays(
    counts,
    spot_xy_px,
    image,
    *,
    microns_per_pixel: float | tuple[float, float],
    spot_diameter_um: float,
    gene_names: Sequence[str] | None = None,
    spot_names: Sequence[str] | None = None,
    obs: pd.DataFrame | None = None,
    section: str | None = None,
    scale_factors: Sequence[int] = (2, 2, 2, 2),
):
    """A SpatialData section (H&E image, circular spots, raw-count table) from plain arrays.

    For platforms sthist has no reader for (legacy ST count tables, exports of other tools): give the counts,
    each spot's centre in pixels of ``image`` and the image's physical scale. Pixels that are not square
    (``microns_per_pixel=(x, y)``) are handled exactly: the section's coordinate system is then in µm (the
    image is placed by a per-axis scale), so patches are true squares of tissue.

    Parameters
    ----------
    counts
        Raw counts, spots × genes: a numpy array, a scipy sparse matrix or a DataFrame (its index names the
        spots and its columns the genes).
    spot_xy_px
        Spot centres (spots × 2; x = column, y = row) in pixels of ``image``.
    image
        The H&E image: an RGB uint8 array (height, width, 3; numpy or dask), its pyramid levels (a list,
        finest first, kept as they are), or the path of an image file. A TIFF (pyramidal or not, e.g. a
        whole-slide image) is read lazily, level by level; PNG and JPEG are read into memory.
    microns_per_pixel
        µm per pixel of ``image``: one number, or ``(x, y)`` when pixels are not square.
    spot_diameter_um
        Spot diameter in µm (55 for Visium, 100 for legacy ST).
    gene_names
        Gene names (columns of ``counts``); taken from a DataFrame's columns when not given.
    spot_names
        Spot names (rows of ``counts``); taken from a DataFrame's index, else ``spot0``, ``spot1``, ….
    obs
        Extra per-spot annotations (rows in the order of ``counts``).
    section
        Name of the section (recorded in ``attrs`` and ``obs['section']``).
    scale_factors
        Downsampling factors of the image pyramid built from a single-level image (a given pyramid is kept).

    Returns
    -------
    A SpatialData object with ``images['he']``, ``shapes['spots']`` (circles) and ``tables['table']`` (raw
    counts annotating the spots, ``obsm['spatial']`` = centres in the coordinate system), its physical scale
    recorded for :func:`sthist.pp.get_microns_per_pixel`.

    Examples
    --------
    >>> import numpy as np
    >>> import sthist
    >>> image = np.full((400, 400, 3), 230, dtype=np.uint8)
    >>> xy = np.array([[100.0, 100.0], [200.0, 150.0], [300.0, 300.0]])
    >>> counts = np.array([[3, 0], [1, 5], [0, 2]])
    >>> sdata = sthist.datasets.from_arrays(
    ...     counts, xy, image, microns_per_pixel=0.5, spot_diameter_um=55, gene_names=["A", "B"]
    ... )
    >>> sdata.tables["table"].shape, sthist.pp.get_microns_per_pixel(sdata)
    ((3, 2), 0.5)
    """
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    if isinstance(counts, pd.DataFrame):
        gene_names = list(counts.columns.astype(str)) if gene_names is None else gene_names
        spot_names = list(counts.index.astype(str)) if spot_names is None else spot_names
        counts = counts.to_numpy()
    matrix = sparse.csr_matrix(counts)
    check_raw_counts(matrix, where="counts")
    n_spots, n_genes = matrix.shape
    xy = np.asarray(spot_xy_px, dtype=float)
    if xy.shape != (n_spots, 2):
        raise ValueError(
            f"spot_xy_px must have one (x, y) row per spot: shape ({n_spots}, 2), got {xy.shape}."
        )
    if not np.isfinite(xy).all():
        raise ValueError("spot_xy_px has NaN or infinite positions.")
    genes = [f"gene{i}" for i in range(n_genes)] if gene_names is None else [str(g) for g in gene_names]
    if isinstance(gene_names, str) or len(genes) != n_genes:
        raise ValueError(f"gene_names must name the {n_genes} columns of counts, got {len(genes)} names.")
    names = [f"spot{i}" for i in range(n_spots)] if spot_names is None else [str(s) for s in spot_names]
    if len(names) != n_spots or len(set(names)) != n_spots:
        raise ValueError(f"spot_names must name the {n_spots} spots once each.")
    diameter = float(spot_diameter_um)
    if not np.isfinite(diameter) or not 0.5 <= diameter <= 1000:
        raise ValueError(
            f"spot_diameter_um must be a spot's diameter in µm (0.5-1000), got {spot_diameter_um!r}."
        )
    if isinstance(microns_per_pixel, tuple | list | np.ndarray):
        if len(microns_per_pixel) != 2:
            raise ValueError(f"microns_per_pixel must be one number or (x, y), got {microns_per_pixel!r}.")
        scale_x, scale_y = (checked_scale(v, "microns_per_pixel") for v in microns_per_pixel)
    else:
        scale_x = scale_y = checked_scale(microns_per_pixel, "microns_per_pixel")
    levels = _read_image(image)
    height, width = levels[0].shape[:2]
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.all():
        raise ValueError(
            f"No spot lies inside the {width} × {height} px image; spot_xy_px must be pixels of this image (x = "
            "column, y = row)."
        )
    anisotropic = not np.isclose(scale_x, scale_y, rtol=1e-6)
    if anisotropic:
        # A coordinate system in µm: the image is placed by its per-axis scale, spots converted to µm.
        image_transform = Scale([scale_y, scale_x], axes=("y", "x"))
        centres, unit, radius = xy * [scale_x, scale_y], 1.0, diameter / 2
        source = f"per-axis scale {scale_x:g} × {scale_y:g} µm/px; coordinate system in µm"
    else:
        image_transform = Identity()
        centres, unit, radius = xy, scale_x, diameter / 2 / scale_x
        source = "given to sthist.datasets.from_arrays"
    frame = pd.DataFrame(index=pd.Index(names, name="spot"))
    if obs is not None:
        if len(obs) != n_spots:
            raise ValueError(f"obs must have one row per spot ({n_spots}), got {len(obs)}.")
        frame = pd.concat([frame, obs.reset_index(drop=True).set_axis(frame.index)], axis=1)
    if section is not None:
        frame[Key.obs.SECTION] = pd.Categorical([section] * n_spots)
    frame[Key.obs.REGION] = pd.Categorical(["spots"] * n_spots)
    frame[Key.obs.INSTANCE] = np.arange(n_spots)
    table = ad.AnnData(X=matrix, obs=frame, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    if not table.var_names.is_unique:
        raise ValueError(
            "gene_names are not unique; make them unique first (e.g. anndata's var_names_make_unique)."
        )
    table.obsm[Key.obsm.SPATIAL] = centres
    table = TableModel.parse(table, region="spots", region_key=Key.obs.REGION, instance_key=Key.obs.INSTANCE)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(n_spots, radius)},
            geometry=gpd.points_from_xy(centres[:, 0], centres[:, 1]),
            index=pd.Index(np.arange(n_spots), name=Key.obs.INSTANCE),
        ),
        transformations={DEFAULT_COORDINATE_SYSTEM: Identity()},
    )
    he = _image_element(levels, image_transform, scale_factors)
    sdata = SpatialData(images={"he": he}, shapes={"spots": shapes}, tables={"table": table})
    set_microns_per_pixel(sdata, unit, source=source)
    if section is not None:
        sdata.attrs[Key.attrs.ROOT][Key.attrs.SECTION] = section
    return sdata


def from_anndata(
    adata,
    image,
    *,
    microns_per_pixel: float | tuple[float, float],
    spot_diameter_um: float,
    spatial_key: str = Key.obsm.SPATIAL,
    layer: str | None = None,
    section: str | None = None,
    scale_factors: Sequence[int] = (2, 2, 2, 2),
):
    """A SpatialData section from an AnnData of raw counts with spot pixel positions, and its H&E image.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``X`` (or ``layer``) and spot centres in pixels of ``image`` in
        ``obsm[spatial_key]`` (x, y), as scanpy and squidpy keep them.
    image
        The H&E image: an RGB uint8 array or the path of an image file.
    microns_per_pixel
        µm per pixel of ``image``: one number, or ``(x, y)`` when pixels are not square.
    spot_diameter_um
        Spot diameter in µm.
    spatial_key
        ``obsm`` key of the spot centres.
    layer
        Layer with the raw counts (``None``: ``X``).
    section
        Name of the section.
    scale_factors
        Downsampling factors of the image pyramid.

    Returns
    -------
    A SpatialData section as :func:`from_arrays` builds it; ``obs`` and the gene names come from ``adata``.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import sthist
    >>> adata = ad.AnnData(np.array([[3, 0], [1, 5]], dtype=np.float32))
    >>> adata.obsm["spatial"] = np.array([[50.0, 60.0], [120.0, 90.0]])
    >>> image = np.full((200, 200, 3), 230, dtype=np.uint8)
    >>> sdata = sthist.datasets.from_anndata(adata, image, microns_per_pixel=1.0, spot_diameter_um=55)
    >>> list(sdata.tables["table"].obs_names) == list(adata.obs_names)
    True
    """
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no {spatial_key!r} with spot centres; available: {sorted(adata.obsm)}."
        )
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"adata has no layer {layer!r}; available: {sorted(adata.layers)}.")
    counts = adata.X if layer is None else adata.layers[layer]
    return from_arrays(
        counts,
        np.asarray(adata.obsm[spatial_key])[:, :2],
        image,
        microns_per_pixel=microns_per_pixel,
        spot_diameter_um=spot_diameter_um,
        gene_names=list(adata.var_names),
        spot_names=list(adata.obs_names),
        obs=adata.obs.copy(),
        section=section,
        scale_factors=scale_factors,
    )
