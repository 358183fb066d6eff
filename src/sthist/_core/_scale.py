"""The physical scale (µm per pixel) of a coordinate system, recorded in ``sdata.attrs``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._logging import logger

if TYPE_CHECKING:
    from spatialdata import SpatialData


def set_microns_per_pixel(
    sdata: SpatialData,
    microns_per_pixel: float,
    *,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    source: str = "set by the user",
) -> None:
    """Record the physical scale of a coordinate system in ``sdata.attrs['sthist']``.

    Parameters
    ----------
    sdata
        The SpatialData object; written in place.
    microns_per_pixel
        Size of one unit of ``coordinate_system`` in µm (µm per pixel of the full-resolution image when the
        coordinate system is in its pixels).
    coordinate_system
        Name of the coordinate system.
    source
        How the value was obtained (kept as provenance).

    Returns
    -------
    ``None``; writes ``sdata.attrs['sthist']['microns_per_pixel'][coordinate_system]`` and
    ``sdata.attrs['sthist']['microns_per_pixel_source'][coordinate_system]``.

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.toy(1)["toy0"]
    >>> sthist.pp.set_microns_per_pixel(sdata, 0.5, source="scanner metadata")
    >>> sthist.pp.get_microns_per_pixel(sdata)
    0.5
    """
    value = float(microns_per_pixel)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"microns_per_pixel must be a positive finite number, got {microns_per_pixel!r}.")
    attrs = sdata.attrs.setdefault(Key.attrs.ROOT, {})
    attrs.setdefault(Key.attrs.MICRONS_PER_PIXEL, {})[coordinate_system] = value
    attrs.setdefault(Key.attrs.SCALE_SOURCE, {})[coordinate_system] = source
    logger.info("recorded %.4f µm/px for coordinate system %r (%s)", value, coordinate_system, source)


def get_microns_per_pixel(
    sdata: SpatialData,
    *,
    coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
    microns_per_pixel: float | None = None,
) -> float:
    """Physical scale (µm per unit) of a coordinate system: the explicit value if given, else the recorded one.

    Parameters
    ----------
    sdata
        The SpatialData object.
    coordinate_system
        Name of the coordinate system.
    microns_per_pixel
        An explicit value, checked and returned as it is.

    Returns
    -------
    µm per unit of ``coordinate_system``; an error says how to record it when it is unknown.

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.toy(1, microns_per_pixel=2.0)["toy0"]
    >>> sthist.pp.get_microns_per_pixel(sdata)
    2.0
    """
    if microns_per_pixel is not None:
        value = float(microns_per_pixel)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(
                f"microns_per_pixel must be a positive finite number, got {microns_per_pixel!r}."
            )
        return value
    recorded = sdata.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.MICRONS_PER_PIXEL, {})
    if coordinate_system not in recorded:
        raise ValueError(
            f"The physical scale of coordinate system {coordinate_system!r} is unknown. Pass "
            "`microns_per_pixel=` or record it once with `sthist.pp.set_microns_per_pixel(sdata, value)` "
            "(sthist's loaders record it; for Visium it follows from the 65 µm spot diameter)."
        )
    return float(recorded[coordinate_system])


def fit_microns_per_pixel(
    array_xy: np.ndarray, pixel_xy: np.ndarray, *, pitch_um: float
) -> tuple[float, float]:
    """Least-squares fit of spot pixel coordinates against array coordinates.

    Fits ``pixel = A @ array + b`` (a full affine map, so rotation and anisotropy are absorbed) and returns
    (µm per pixel, root-mean-square residual in pixels). One array step is ``pitch_um`` µm; the scale is the
    square root of the area ratio, ``pitch_um / sqrt(|det A|)``.

    Parameters
    ----------
    array_xy
        Array (grid) coordinates of the spots (n, 2).
    pixel_xy
        Pixel coordinates of the same spots in the image (n, 2).
    pitch_um
        Distance in µm of one array step (e.g. 100 µm for legacy ST, 100 µm / 2 per column for Visium's
        offset rows, depending on how the grid is indexed).

    Returns
    -------
    ``(microns_per_pixel, rms_residual_px)``.

    Examples
    --------
    >>> import numpy as np
    >>> import sthist
    >>> grid = np.array([[x, y] for x in range(5) for y in range(5)], dtype=float)
    >>> scale, residual = sthist.pp.fit_microns_per_pixel(grid, grid * 200 + 30, pitch_um=100)
    >>> round(scale, 3), round(residual, 6)
    (0.5, 0.0)
    """
    array_xy = np.asarray(array_xy, dtype=float)
    pixel_xy = np.asarray(pixel_xy, dtype=float)
    if len(array_xy) < 3:
        raise ValueError(f"At least 3 spots are needed to fit the physical scale; got {len(array_xy)}.")
    design = np.c_[array_xy, np.ones(len(array_xy))]
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    det = abs(np.linalg.det(coef[:2]))
    if det == 0:
        raise ValueError(
            "Spot array coordinates are degenerate (collinear); the physical scale cannot be fitted."
        )
    rms = float(np.sqrt(((design @ coef - pixel_xy) ** 2).sum(axis=1).mean()))
    return float(pitch_um / np.sqrt(det)), rms
