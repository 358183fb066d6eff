"""Preprocessing: normalisation, gene panels, physical scale, patch geometry and spot quality control."""

from sthist._core._scale import fit_microns_per_pixel, get_microns_per_pixel, set_microns_per_pixel
from sthist._core._section import PatchGeometry
from sthist._core._tissue import tissue_mask
from sthist.pp._features import spot_features_from_tiles
from sthist.pp._geometry import patch_geometry
from sthist.pp._normalize import normalize
from sthist.pp._panel import select_genes, technical_genes
from sthist.pp._qc import qc_spots, spot_tissue_fraction

__all__ = [
    "PatchGeometry",
    "fit_microns_per_pixel",
    "get_microns_per_pixel",
    "normalize",
    "patch_geometry",
    "qc_spots",
    "select_genes",
    "set_microns_per_pixel",
    "spot_features_from_tiles",
    "spot_tissue_fraction",
    "technical_genes",
    "tissue_mask",
]
