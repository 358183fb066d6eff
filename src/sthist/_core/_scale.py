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
    value = checked_scale(microns_per_pixel, "microns_per_pixel")
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
        return checked_scale(microns_per_pixel, "microns_per_pixel")
    recorded = sdata.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.MICRONS_PER_PIXEL, {})
    if not isinstance(recorded, dict):
        raise ValueError(
            f"sdata.attrs[{Key.attrs.ROOT!r}][{Key.attrs.MICRONS_PER_PIXEL!r}] must map coordinate systems to µm "
            f"per unit, got {recorded!r}; record the scale with `sthist.pp.set_microns_per_pixel(sdata, value)`."
        )
    if coordinate_system not in recorded:
        raise ValueError(
            f"The physical scale of coordinate system {coordinate_system!r} is unknown. Pass "
            "`microns_per_pixel=` or record it once with `sthist.pp.set_microns_per_pixel(sdata, value)` "
            "(sthist's loaders record it; for Visium it follows from the 65 µm spot diameter)."
        )
    return checked_scale(
        recorded[coordinate_system],
        f"the scale recorded in sdata.attrs[{Key.attrs.ROOT!r}][{Key.attrs.MICRONS_PER_PIXEL!r}]"
        f"[{coordinate_system!r}]",
    )


#: Plausible µm per unit of a coordinate system: from sub-cellular scans (0.05) to coarse thumbnails (100).
MICRONS_PER_PIXEL_RANGE = (0.01, 100.0)


def checked_scale(value, what: str) -> float:
    """``value`` as µm per unit, refused unless a finite number inside :data:`MICRONS_PER_PIXEL_RANGE`."""
    low, high = MICRONS_PER_PIXEL_RANGE
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not np.isfinite(number) or number <= 0:
        raise ValueError(
            f"{what} must be a positive number of µm per pixel, got {value!r}; record the right value with "
            "`sthist.pp.set_microns_per_pixel(sdata, value)`."
        )
    if not low <= number <= high:
        raise ValueError(
            f"{what} is {number:g} µm per pixel, outside the plausible range {low:g}-{high:g} (H&E scans are "
            "about 0.25-1 µm/px, Visium hires images about 2-5); check the value and its unit."
        )
    return number


class ScaleFit(tuple):
    """The fitted scale: unpacks as ``(microns_per_pixel, rms_residual_px)``; ``x``, ``y`` are the per-axis µm/px.

    ``axes`` = ``(x, y)`` goes straight into ``sthist.datasets.from_arrays(microns_per_pixel=...)`` for images
    whose pixels are not square.
    """

    microns_per_pixel: float
    rms: float
    x: float
    y: float

    def __new__(cls, microns_per_pixel: float, rms: float, x: float, y: float):
        fit = super().__new__(cls, (microns_per_pixel, rms))
        fit.microns_per_pixel, fit.rms, fit.x, fit.y = microns_per_pixel, rms, x, y
        return fit

    @property
    def axes(self) -> tuple[float, float]:
        """µm per pixel along x and along y."""
        return (self.x, self.y)

    def __repr__(self) -> str:
        return f"ScaleFit(microns_per_pixel={self.microns_per_pixel:.4g}, rms={self.rms:.3g}, x={self.x:.4g}, y={self.y:.4g})"


def fit_microns_per_pixel(array_xy: np.ndarray, pixel_xy: np.ndarray, *, pitch_um: float) -> ScaleFit:
    """Least-squares fit of spot pixel coordinates against array coordinates.

    Fits ``pixel = A @ array + b`` (a full affine map, so a rotation of the array is absorbed) and returns
    (µm per pixel, root-mean-square residual in pixels). One array step is ``pitch_um`` µm; the scale is the
    square root of the area ratio, ``pitch_um / sqrt(|det A|)``; the scale along each axis is returned too.
    When the pixels are not square (x and y scales more than 1 % apart) a warning says so, since one scale
    stretches patches by their ratio: pass ``fit.axes`` to ``from_arrays(microns_per_pixel=...)``, or give
    the image a ``Scale`` transformation to a coordinate system with square units.

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
    A :class:`ScaleFit`: it unpacks as ``(microns_per_pixel, rms_residual_px)`` (the geometric mean of the
    axes' scales) and has ``.x``, ``.y`` (µm/px along each axis), ``.axes`` = ``(x, y)`` and ``.rms``.

    Examples
    --------
    >>> import numpy as np
    >>> import sthist
    >>> grid = np.array([[x, y] for x in range(5) for y in range(5)], dtype=float)
    >>> scale, residual = sthist.pp.fit_microns_per_pixel(grid, grid * 200 + 30, pitch_um=100)
    >>> round(scale, 3), round(residual, 6)
    (0.5, 0.0)
    >>> import warnings
    >>> with warnings.catch_warnings(action="ignore"):  # pixels 250 px apart along y: not square
    ...     fit = sthist.pp.fit_microns_per_pixel(grid, grid * [200, 250], pitch_um=100)
    >>> tuple(round(v, 3) for v in fit.axes)
    (0.5, 0.4)
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
    scale = float(pitch_um / np.sqrt(det))
    # Row i of the array → pixel map (coef[:2, i] here) has length pitch / (µm per pixel along axis i).
    scale_x, scale_y = (float(pitch_um / np.linalg.norm(coef[:2, axis])) for axis in (0, 1))
    if abs(scale_x / scale_y - 1) > 0.01:
        import warnings

        warnings.warn(
            f"The pixels are not square: {scale_x:.4g} µm/px along x and {scale_y:.4g} µm/px along y "
            f"({abs(scale_x / scale_y - 1):.1%} apart). One scale, {scale:.4g} µm/px (their geometric mean), "
            "stretches patches by that ratio: pass the fit's .axes to from_arrays(microns_per_pixel=...), or "
            "give the image a Scale transformation to a coordinate system with square units.",
            UserWarning,
            stacklevel=2,
        )
    return ScaleFit(scale, rms, scale_x, scale_y)
