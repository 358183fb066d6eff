"""Pyramid levels of an H&E image and their placement in a coordinate system."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr


@dataclass(frozen=True)
class ImageLevel:
    """One pyramid level: its pixels and the map from coordinate-system units to its pixel coordinates.

    Pixel ``(row i, column j)`` covers ``[j, j + 1) × [i, i + 1)`` in level pixel coordinates.
    """

    index: int
    data: xr.DataArray
    #: 3 × 3 affine matrix mapping coordinate-system (x, y) to level pixel (x, y).
    to_pixels: np.ndarray
    #: Coordinate-system units per level pixel (x, y).
    pixel_size: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.data.sizes["y"]), int(self.data.sizes["x"])

    @property
    def nbytes(self) -> int:
        return int(np.prod([self.data.sizes[d] for d in self.data.dims])) * self.data.dtype.itemsize


def check_rgb(data: xr.DataArray, image_key: str) -> None:
    """Refuse images that are not 8-bit RGB (H&E)."""
    if tuple(data.dims) != ("c", "y", "x"):
        raise ValueError(f"Image {image_key!r} must have dims ('c', 'y', 'x'); got {tuple(data.dims)}.")
    if data.sizes["c"] != 3:
        raise ValueError(
            f"Image {image_key!r} has {data.sizes['c']} channels; an RGB H&E image with 3 channels is expected "
            "(drop an alpha channel or select the RGB channels first)."
        )
    if data.dtype != np.uint8:
        raise ValueError(
            f"Image {image_key!r} has dtype {data.dtype}; 8-bit RGB (uint8) is expected. Rescale to 0-255 and "
            "cast to uint8 first."
        )


def image_levels(image, *, coordinate_system: str, image_key: str) -> list[ImageLevel]:
    """All pyramid levels of a single- or multi-scale image, finest first."""
    from spatialdata import get_pyramid_levels
    from spatialdata.transformations import get_transformation

    arrays = get_pyramid_levels(image) if is_multiscale(image) else [image]
    check_rgb(arrays[0], image_key)
    levels = []
    for index, data in enumerate(arrays):
        systems = get_transformation(data, get_all=True)
        if coordinate_system not in systems:
            raise ValueError(
                f"Image {image_key!r} is not placed in coordinate system {coordinate_system!r}; "
                f"available: {sorted(systems)}."
            )
        to_system = systems[coordinate_system].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        if abs(to_system[0, 1]) > 1e-9 * abs(to_system[0, 0]) or abs(to_system[1, 0]) > 1e-9 * abs(
            to_system[1, 1]
        ):
            raise ValueError(
                f"Image {image_key!r} is rotated or sheared in {coordinate_system!r}; spot patches need an "
                "axis-aligned image (scale and translation only). Resample the image first."
            )
        if to_system[0, 0] <= 0 or to_system[1, 1] <= 0:
            raise ValueError(
                f"Image {image_key!r} is flipped in {coordinate_system!r}; this is not supported."
            )
        levels.append(
            ImageLevel(
                index=index,
                data=data,
                to_pixels=np.linalg.inv(to_system),
                pixel_size=(float(to_system[0, 0]), float(to_system[1, 1])),
            )
        )
    return levels


def is_multiscale(image) -> bool:
    """Whether an image element is a pyramid (a DataTree of ``scale0``, ``scale1``, ...)."""
    return len(getattr(image, "children", {})) > 0


def full_resolution(image) -> xr.DataArray:
    """The full-resolution DataArray of a single- or multi-scale image."""
    from spatialdata import get_pyramid_levels

    return get_pyramid_levels(image, n=0) if is_multiscale(image) else image


def zarr_source(data) -> Any | None:
    """The zarr array a dask array reads unchanged (``dask.array.from_zarr`` with the array's own chunks), else ``None``.

    Any operation on top of the read (a rechunk, a cast, a slice) adds layers to the graph, and then the dask
    array is not a plain view of the zarr array.
    """
    graph = data.__dask_graph__() if hasattr(data, "__dask_graph__") else None
    layers = getattr(graph, "layers", {})
    names = sorted(layers)
    if len(names) != 2 or not (
        names[0].startswith("from-zarr-") and names[1] == f"original-{names[0]}" and data.name == names[0]
    ):
        return None
    values = list(dict(layers[names[1]]).values())
    if len(values) != 1:
        return None
    source = values[0]
    chunks = getattr(source, "chunks", None)
    if (
        type(source).__module__.split(".")[0] != "zarr"
        or tuple(source.shape) != tuple(data.shape)
        or source.dtype != data.dtype
        or chunks is None
        or any(max(sizes) != size for sizes, size in zip(data.chunks, chunks, strict=True))
    ):
        return None
    return source


def level_pixels(level: ImageLevel) -> np.ndarray:
    """All pixels of a level, (height, width, 3) and contiguous; read from its zarr array directly when possible.

    A dask compute of a whole level costs far more than the read itself (``benchmarks/results/tiles.md``),
    so levels that are plain views of a zarr array are read from it.
    """
    source = zarr_source(level.data.data)
    pixels = np.asarray(source[...] if source is not None else level.data.data)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def to_pixels(level: ImageLevel, xy: np.ndarray) -> np.ndarray:
    """Map coordinate-system points (n, 2) to level pixel coordinates (n, 2)."""
    homogeneous = np.c_[xy, np.ones(len(xy))]
    return (homogeneous @ level.to_pixels.T)[:, :2]


def missing_chunks(level: ImageLevel) -> tuple[int, int]:
    """(missing, total) chunks of the zarr arrays a level is read from; (0, 0) for in-memory data.

    zarr reads a chunk that is not stored as its fill value, so pixels of an interrupted copy read as black
    without an error.
    """
    import zarr

    data = level.data.data
    graph = getattr(data, "dask", None)
    if graph is None:
        return 0, 0
    missing = total = 0
    for value in graph.values():
        if isinstance(value, zarr.Array):
            total += int(value.nchunks)
            missing += int(value.nchunks) - int(value.nchunks_initialized)
    return missing, total


def warn_missing_chunks(level: ImageLevel, image_key: str) -> None:
    """Warn when chunks of the level are absent from its zarr store (they read as black pixels)."""
    import warnings

    missing, total = missing_chunks(level)
    if missing:
        warnings.warn(
            f"{missing} of {total} chunks of image {image_key!r} (level {level.index}) are not in its zarr store and "
            "read as black (zarr's fill value). If the store was copied or downloaded, the copy is incomplete; "
            "copy it again. (A store may also leave out chunks that are entirely black.)",
            UserWarning,
            stacklevel=3,
        )
