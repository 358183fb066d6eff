"""Pixel access to one pyramid level: a materialised array, or lazy reads of cached tiles."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from sthist._core._image import ImageLevel, level_pixels, zarr_source


class InMemoryLevel:
    """The whole level as one (height, width, 3) uint8 array; patches are numpy slices of it.

    The level is materialised on the first read, so a dataset whose patches are never cut (tokens already
    cached) costs no memory.
    """

    def __init__(self, level: ImageLevel):
        self.shape = level.shape
        self._level = level
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = level_pixels(self._level)
        return self._pixels

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


#: Side (level pixels) of the squares a lazy reader reads and caches when it cannot read by chunks.
LAZY_TILE_PX = 2048
#: Largest chunk (bytes) a lazy reader reads whole and caches, and the memory its chunk cache may hold.
CHUNK_BYTES, CHUNK_CACHE_BYTES = 64 * 2**20, 160 * 2**20


class LazyLevel:
    """Reads a level lazily by its storage chunks, keeping the last few decoded; patches are cut from them.

    A patch costs a numpy slice when its chunk is cached (or a copy from the two to four chunks it straddles)
    and one chunk read otherwise; there is never a task graph per patch. Each chunk is decoded whole by the
    store anyway, so reading by chunks decodes only chunks a patch touches, and iterated in spatial order (as
    the dataset does by default) each about once. Levels stored in chunks larger than ``CHUNK_BYTES`` are read
    in squares of ``tile_size`` with a margin that holds any patch centred in the square instead.
    """

    def __init__(
        self, level: ImageLevel, *, margin: int, tile_size: int = LAZY_TILE_PX, cached_tiles: int = 4
    ):
        self.shape = level.shape
        self.data = level.data.data  # dask array (c, y, x)
        self.tile_size = int(tile_size)
        self.margin = int(margin)
        self.cached_tiles = int(cached_tiles)
        self._tiles: OrderedDict[tuple[int, int], Any] = OrderedDict()  # chunks or squares (_cached)
        rows, columns = self.data.chunks[1], self.data.chunks[2]
        chunk_bytes = self.data.shape[0] * max(rows) * max(columns) * self.data.dtype.itemsize
        self._edges: tuple[np.ndarray, np.ndarray] | None = None
        # Pixels are read from the zarr array itself when the dask array is a plain view of it (a quarter of
        # the time of a dask compute per chunk); otherwise through dask.
        self._store = zarr_source(self.data)
        if chunk_bytes <= CHUNK_BYTES:
            self._edges = (np.cumsum((0, *rows)), np.cumsum((0, *columns)))
            self.cached_chunks = max(4, CHUNK_CACHE_BYTES // max(chunk_bytes, 1))

    def _cached(self, key: tuple[int, int], load: Callable[[], Any], capacity: int) -> Any:
        """The cached value of ``key`` (most recently used now), else ``load()``, keeping ``capacity`` values.

        One reader caches either chunks or squares, never both.
        """
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        self._tiles[key] = load()
        if len(self._tiles) > capacity:
            self._tiles.popitem(last=False)
        return self._tiles[key]

    def _chunk(self, edges: tuple[np.ndarray, np.ndarray], row: int, column: int) -> np.ndarray:
        """Chunk (row, column) of the level as stored, (3, height, width), from the cache when there.

        Kept channels first: patches are transposed when cut, which costs far less than transposing chunks.
        """
        edges_y, edges_x = edges
        return self._cached(
            (row, column),
            lambda: self._region(edges_y[row], edges_y[row + 1], edges_x[column], edges_x[column + 1]),
            self.cached_chunks,
        )

    def _region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as stored, (3, height, width): from the zarr array when the level is a view of one."""
        if self._store is not None:
            return np.asarray(self._store[:, y0:y1, x0:x1])
        return np.asarray(self.data[:, y0:y1, x0:x1].compute())

    def _read_chunks(
        self, edges: tuple[np.ndarray, np.ndarray], y0: int, y1: int, x0: int, x1: int
    ) -> np.ndarray:
        edges_y, edges_x = edges
        rows = range(
            int(np.searchsorted(edges_y, y0, "right")) - 1, int(np.searchsorted(edges_y, y1 - 1, "right"))
        )
        columns = range(
            int(np.searchsorted(edges_x, x0, "right")) - 1, int(np.searchsorted(edges_x, x1 - 1, "right"))
        )
        if len(rows) == 1 and len(columns) == 1:
            top, left = edges_y[rows[0]], edges_x[columns[0]]
            chunk = self._chunk(edges, rows[0], columns[0])
            return chunk[:, y0 - top : y1 - top, x0 - left : x1 - left].transpose(1, 2, 0)
        out = np.empty((y1 - y0, x1 - x0, self.data.shape[0]), dtype=self.data.dtype)
        for row in rows:
            top, bottom = max(y0, edges_y[row]), min(y1, edges_y[row + 1])
            for column in columns:
                left, right = max(x0, edges_x[column]), min(x1, edges_x[column + 1])
                chunk = self._chunk(edges, row, column)
                ys = slice(top - edges_y[row], bottom - edges_y[row])
                xs = slice(left - edges_x[column], right - edges_x[column])
                out[top - y0 : bottom - y0, left - x0 : right - x0] = chunk[:, ys, xs].transpose(1, 2, 0)
        return out

    def _tile(self, row: int, column: int) -> tuple[int, int, np.ndarray]:
        """Square (row, column) with its margin, as (its top, its left, pixels (height, width, 3))."""
        height, width = self.shape
        y0 = max(row * self.tile_size - self.margin, 0)
        x0 = max(column * self.tile_size - self.margin, 0)
        y1 = min((row + 1) * self.tile_size + self.margin, height)
        x1 = min((column + 1) * self.tile_size + self.margin, width)

        def load() -> tuple[int, int, np.ndarray]:
            return y0, x0, np.ascontiguousarray(self._region(y0, y1, x0, x1).transpose(1, 2, 0))

        return self._cached((row, column), load, self.cached_tiles)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._edges is not None:
            return self._read_chunks(
                self._edges, max(y0, 0), min(y1, self.shape[0]), max(x0, 0), min(x1, self.shape[1])
            )
        row = ((y0 + y1) // 2) // self.tile_size
        column = ((x0 + x1) // 2) // self.tile_size
        tile_y, tile_x, pixels = self._tile(row, column)
        if (
            y0 >= tile_y
            and x0 >= tile_x
            and y1 - tile_y <= pixels.shape[0]
            and x1 - tile_x <= pixels.shape[1]
        ):
            return pixels[y0 - tile_y : y1 - tile_y, x0 - tile_x : x1 - tile_x]
        # A patch larger than the margin: read it directly (one chunked read).
        return self._region(y0, y1, x0, x1).transpose(1, 2, 0)

    def __getstate__(self):
        # Worker processes start with an empty tile (or chunk) cache.
        state = self.__dict__.copy()
        state["_tiles"] = OrderedDict()
        return state
