"""Datasets as SpatialData: real data (hashed registry), HEST-1k, Visium, Visium HD and Xenium readers, arrays, a synthetic toy."""

from sthist.datasets._arrays import from_anndata, from_arrays
from sthist.datasets._her2st import MARKER_GENES as her2st_marker_genes
from sthist.datasets._her2st import her2st
from sthist.datasets._hest import download_hest, hest
from sthist.datasets._registry import fetch
from sthist.datasets._toy import toy
from sthist.datasets._visium import seurat_visium, visium
from sthist.datasets._visium_hd import visium_hd
from sthist.datasets._xenium import xenium

__all__ = [
    "download_hest",
    "fetch",
    "from_anndata",
    "from_arrays",
    "her2st",
    "her2st_marker_genes",
    "hest",
    "seurat_visium",
    "toy",
    "visium",
    "visium_hd",
    "xenium",
]
