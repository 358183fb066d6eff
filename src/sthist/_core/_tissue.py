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
MIN_COMPONENT_PIXELS = 40


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[np.argmax(between)])


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB H&E image (h, w, 3; uint8).

    Stained tissue is coloured; glass is bright and grey, masked background is black. A pixel is stained
    tissue when its saturation exceeds an Otsu threshold (clipped to 0.04-0.12) and it is not near-black.
    Pale tissue (weak eosin, e.g. the outer layers of a mouse olfactory bulb) is barely coloured but darker
    than the glass: pixels darker than the glass level (the 98th percentile of the grey level) by an Otsu
    threshold between glass and pale tissue (clipped to 0.07-0.2) are added where they connect to stained tissue, so that grey fiducials
    and shadows on the glass stay out. Small holes (fat, tears) inside tissue are closed, and components
    under 40 pixels dropped.

    Parameters
    ----------
    rgb
        The image (height, width, 3; uint8), typically a low-resolution pyramid level (about 16 µm/px).

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
    stained = lit & (saturation > threshold)
    grey = rgb.mean(axis=-1)
    darkness = np.clip(1 - grey / max(float(np.percentile(grey[lit], 98)), 1e-6), 0, 1)
    unstained = lit & ~stained  # glass and pale tissue: the darkness threshold separates those two
    cut = _otsu(darkness[unstained]) if unstained.any() else MAX_DARKNESS
    darker = unstained & (darkness > float(np.clip(cut, MIN_DARKNESS, MAX_DARKNESS)))
    mask = ndimage.binary_propagation(stained, mask=stained | darker)  # pale tissue attached to stained
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) >= MIN_COMPONENT_PIXELS
    keep[0] = False
    return keep[labels]
