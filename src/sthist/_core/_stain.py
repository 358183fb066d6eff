"""Stain normalisation (Reinhard et al. 2001): each section's colour statistics mapped onto a reference.

Sections from different patients, labs and scanning days differ in stain intensity and hue; an encoder
trained elsewhere (ImageNet) sees those differences as strongly as tissue structure. Reinhard's method
matches the per-channel mean and standard deviation of the section's tissue pixels, in the decorrelated
lαβ colour space, to a reference. The statistics are taken over the tissue mask of the low-resolution
level, so one section gets one transform (patches are not normalised one by one, which would remove real
differences between regions of the section).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# RGB → LMS cone space and log-LMS → lαβ (Reinhard et al. 2001, "Color transfer between images").
_RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], dtype=np.float64
)
_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)
_LAB_TO_LMS = np.linalg.inv(_LMS_TO_LAB)
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Reinhard's lαβ of uint8 RGB pixels (..., 3) as float64."""
    lms = (np.maximum(rgb.astype(np.float64), 1.0) / 255.0) @ _RGB_TO_LMS.T
    return np.log10(np.maximum(lms, 1e-6)) @ _LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels (..., 3) from Reinhard's lαβ."""
    lms = 10.0 ** (lab @ _LAB_TO_LMS.T)
    return np.clip(np.rint(lms @ _LMS_TO_RGB.T * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class StainStats:
    """Mean and standard deviation of a section's tissue pixels in lαβ (three values each)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> StainStats:
        mean, std = tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"])
        if len(mean) != 3 or len(std) != 3 or not np.isfinite([*mean, *std]).all() or min(std) <= 0:
            raise ValueError(
                f"Stain statistics need three finite means and positive deviations, got {values!r}."
            )
        return cls(mean, std)

    @classmethod
    def average(cls, stats: list[StainStats]) -> StainStats:
        """The reference of a cohort: the mean of its sections' means and deviations."""
        mean = np.mean([s.mean for s in stats], axis=0)
        std = np.mean([s.std for s in stats], axis=0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]


def stain_stats(rgb: np.ndarray, mask: np.ndarray) -> StainStats:
    """Stain statistics of the pixels of ``rgb`` (h, w, 3; uint8) where ``mask`` is true."""
    pixels = rgb[mask]
    if len(pixels) < 100:
        raise ValueError(
            f"Only {len(pixels)} tissue pixels found at low resolution; stain statistics need tissue. Check the "
            "image, or fit without stain normalisation."
        )
    lab = rgb_to_lab(pixels)
    return StainStats(
        tuple(float(v) for v in lab.mean(axis=0)),  # type: ignore[arg-type]
        tuple(float(v) for v in np.maximum(lab.std(axis=0), 1e-6)),  # type: ignore[arg-type]
    )


def normalise(patch: np.ndarray, source: StainStats, target: StainStats) -> np.ndarray:
    """``patch`` (h, w, 3; uint8) with its section's stain statistics ``source`` mapped onto ``target``."""
    lab = rgb_to_lab(patch)
    scale = np.asarray(target.std) / np.asarray(source.std)
    lab = (lab - np.asarray(source.mean)) * scale + np.asarray(target.mean)
    return lab_to_rgb(lab)


# Stain vectors of haematoxylin, eosin and DAB as optical densities in RGB (Ruifrok & Johnston 2001), each
# normalised to unit length: optical density = concentrations @ _HED_TO_OD.
_HED_TO_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_HED_TO_OD = _HED_TO_OD / np.linalg.norm(_HED_TO_OD, axis=1, keepdims=True)
_OD_TO_HED = np.linalg.inv(_HED_TO_OD)


def hed_jitter(patch: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``patch`` (h, w, 3; uint8) with its stain concentrations randomly rescaled and shifted (HED augmentation).

    Colour deconvolution (Ruifrok & Johnston 2001) splits the optical density of each pixel into
    haematoxylin, eosin and DAB concentrations; each is scaled by α ~ U(1 − σ, 1 + σ) and shifted by
    β ~ U(−σ, σ), with σ = ``strength`` (Tellez et al. 2018, "HED-light" is σ = 0.05), and the patch is
    recomposed. One draw per patch, so the whole patch changes stain as a section from another lab would.
    """
    if strength == 0:
        return patch
    od = -np.log10(np.maximum(patch.astype(np.float64), 1.0) / 255.0)
    concentrations = od @ _OD_TO_HED
    alpha = rng.uniform(1 - strength, 1 + strength, size=3)
    beta = rng.uniform(-strength, strength, size=3)
    od = (concentrations * alpha + beta) @ _HED_TO_OD
    return np.clip(np.rint(255.0 * 10.0 ** (-od)), 0, 255).astype(np.uint8)
