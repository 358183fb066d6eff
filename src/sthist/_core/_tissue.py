"""Tissue mask of an H&E image: stained tissue is coloured, glass is bright and grey."""

from __future__ import annotations

import numpy as np

#: Resolution (µm/px) at which the tissue mask is computed: finer than a spot, coarse enough to be cheap.
TISSUE_MASK_MICRONS_PER_PIXEL = 16.0
#: Bounds of the saturation threshold between glass and stained tissue.
MIN_SATURATION, MAX_SATURATION = 0.04, 0.12
#: Bounds of the darkness threshold (1 - grey level / glass level) that admits pale tissue.
MIN_DARKNESS, MAX_DARKNESS = 0.07, 0.2
#: Mask components smaller than this many pixels are dropped (about (100 µm)² at 16 µm/px: fiducials, dust).
MIN_COMPONENT_PIXELS = 40  # at 16 µm/px; scaled to the resolution of the image masked
#: Components thinner than this (largest inscribed radius, pixels; 2 px ≈ 64 µm across at 16 µm/px) are lines:
#: pen marks, bubble rims, scratches, the edge of a coverslip.
MIN_THICKNESS_PX = 2.0  # at 16 µm/px, scaled likewise
#: Share of a component's pixels that must be H&E-coloured (green the weakest channel: eosin pink and
#: haematoxylin purple), against the bluish-grey of scanner frames and the blue, green or black of pens.
MIN_STAIN_FRACTION = 0.3
#: A component touching the image border with nearly all of its pixels within this fraction of the image's
#: side from the border is a frame (the blurred margin of legacy ST images, a slide label's edge).
FRAME_BAND = 0.12


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[np.argmax(between)])


def tissue_mask(rgb: np.ndarray, *, microns_per_pixel: float = TISSUE_MASK_MICRONS_PER_PIXEL) -> np.ndarray:
    """Boolean tissue mask of an RGB H&E image (h, w, 3; uint8).

    Stained tissue is coloured; glass is bright and grey, masked background is black. A pixel is stained
    tissue when its saturation exceeds an Otsu threshold (clipped to 0.04-0.12) and it is not near-black.
    Pale tissue (weak eosin, e.g. the outer layers of a mouse olfactory bulb) is barely coloured but darker
    than the glass: pixels darker than the glass level (the 98th percentile of the grey level) by an Otsu
    threshold between glass and pale tissue (clipped to 0.07-0.2) are added where they connect to stained
    tissue, so that grey fiducials and shadows on the glass stay out. Small holes (fat, tears) inside tissue
    are closed. Components that are not tissue are dropped: specks (under ``MIN_COMPONENT_PIXELS``), lines
    (pen marks, bubble rims: thinner than ``MIN_THICKNESS_PX``), components that are not H&E-coloured
    (bluish-grey scanner frames, blue or green pen: fewer than ``MIN_STAIN_FRACTION`` of their pixels with
    green the weakest channel) and frames (touching the border and lying within ``FRAME_BAND`` of it).

    Parameters
    ----------
    rgb
        The image (height, width, 3; uint8), typically a low-resolution pyramid level (about 16 µm/px).
    microns_per_pixel
        Its resolution: the smallest component and the thinnest line kept are sizes in µm, converted to its
        pixels (images without a coarse level are masked at their own resolution).

    Returns
    -------
    Boolean mask (height, width), ``True`` on tissue.

    Examples
    --------
    >>> import numpy as np
    >>> import sthist
    >>> rgb = np.full((40, 40, 3), 240, dtype=np.uint8)
    >>> rgb[10:30, 10:30] = (180, 90, 160)  # stained square on glass
    >>> int(sthist.pp.tissue_mask(rgb).sum())
    400
    """
    from scipy import ndimage

    rgb = rgb.astype(np.float32) / 255.0
    brightest = rgb.max(axis=-1)
    saturation = (brightest - rgb.min(axis=-1)) / np.maximum(brightest, 1e-6)
    lit = brightest > 0.1
    if not lit.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    threshold = float(np.clip(_otsu(saturation[lit]), MIN_SATURATION, MAX_SATURATION))
    # Green weakest (within 2 %): eosin's pink and haematoxylin's purple, not the grey-blue of frames and pens.
    # Judged per component (below), not per pixel: pale bluish pixels at tissue edges stay tissue.
    stain_coloured = rgb[..., 1] <= np.minimum(rgb[..., 0], rgb[..., 2]) + 0.02
    stained = lit & (saturation > threshold)
    grey = rgb.mean(axis=-1)
    darkness = np.clip(1 - grey / max(float(np.percentile(grey[lit], 98)), 1e-6), 0, 1)
    unstained = lit & ~stained  # glass and pale tissue: the darkness threshold separates those two
    cut = _otsu(darkness[unstained]) if unstained.any() else MAX_DARKNESS
    darker = unstained & (darkness > float(np.clip(cut, MIN_DARKNESS, MAX_DARKNESS)))
    mask = ndimage.binary_propagation(stained, mask=stained | darker)  # pale tissue attached to stained
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    # Components are judged before holes are filled: a frame around the slide would otherwise enclose it.
    labels, count = ndimage.label(mask)
    scale = TISSUE_MASK_MICRONS_PER_PIXEL / microns_per_pixel  # this image's pixels per 16 µm
    mask = _tissue_components(labels, count, stain_coloured, scale)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) >= MIN_COMPONENT_PIXELS * scale**2
    keep[0] = False
    return keep[labels]


def _tissue_components(
    labels: np.ndarray, count: int, stain_coloured: np.ndarray, scale: float
) -> np.ndarray:
    """The mask of the labelled components that look like tissue: large, thick, H&E-coloured, not a frame."""
    from scipy import ndimage

    if count == 0:
        return labels > 0
    index = np.arange(1, count + 1)
    area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    stain_fraction = np.asarray(ndimage.mean(stain_coloured, labels, index))
    thickness = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(labels > 0), labels, index))
    height, width = labels.shape
    rows, columns = np.indices(labels.shape)
    from_border = np.minimum(np.minimum(rows, height - 1 - rows), np.minimum(columns, width - 1 - columns))
    in_band = np.asarray(ndimage.mean(from_border <= FRAME_BAND * min(height, width), labels, index))
    touches = np.asarray(ndimage.minimum(from_border, labels, index)) == 0
    keep = (
        (area >= MIN_COMPONENT_PIXELS * scale**2)
        & (stain_fraction >= MIN_STAIN_FRACTION)
        & (thickness >= MIN_THICKNESS_PX * scale)
        & ~(touches & (in_band > 0.9))
    )
    return np.r_[False, keep][labels]
