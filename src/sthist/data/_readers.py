"""Pixel access to one pyramid level: a materialised array, or lazy reads of cached tiles."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from sthist._core._image import ImageLevel


class InMemoryLevel:
    """The whole level as one (height, width, 3) uint8 array; patches are numpy slices of it.

    The level is materialised on the first read, so a dataset whose patches are never cut (tokens already
    cached) costs no memory.
    """

    def __init__(self, level: ImageLevel):
        self.shape = level.shape
        self._data = level.data.data
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.ascontiguousarray(np.asarray(self._data.compute()).transpose(1, 2, 0))
        return self._pixels

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


class LazyLevel:
    """Reads square tiles (with a margin that holds any patch centred in the tile) and keeps the last few.

    A patch costs one numpy slice when its tile is cached, and one chunked read of a tile otherwise; there
    is never a task graph per patch. Iterate spots in spatial order (as the dataset does by default) to read
    each tile once.
    """

    def __init__(self, level: ImageLevel, *, margin: int, tile_size: int = 2048, cached_tiles: int = 4):
        self.shape = level.shape
        self.data = level.data.data  # dask array (c, y, x)
        self.tile_size = int(tile_size)
        self.margin = int(margin)
        self.cached_tiles = int(cached_tiles)
        self._tiles: OrderedDict[tuple[int, int], tuple[int, int, np.ndarray]] = OrderedDict()

    def _tile(self, row: int, column: int) -> tuple[int, int, np.ndarray]:
        key = (row, column)
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        height, width = self.shape
        y0 = max(row * self.tile_size - self.margin, 0)
        x0 = max(column * self.tile_size - self.margin, 0)
        y1 = min((row + 1) * self.tile_size + self.margin, height)
        x1 = min((column + 1) * self.tile_size + self.margin, width)
        pixels = np.ascontiguousarray(np.asarray(self.data[:, y0:y1, x0:x1].compute()).transpose(1, 2, 0))
        self._tiles[key] = (y0, x0, pixels)
        if len(self._tiles) > self.cached_tiles:
            self._tiles.popitem(last=False)
        return self._tiles[key]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
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
        return np.asarray(self.data[:, y0:y1, x0:x1].compute()).transpose(1, 2, 0)

    def __getstate__(self):
        # Worker processes start with an empty tile cache.
        state = self.__dict__.copy()
        state["_tiles"] = OrderedDict()
        return state
