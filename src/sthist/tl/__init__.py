"""Tools: fit a model on measured sections, predict expression at spots, evaluate and cross-validate."""

from sthist.tl._cohort import predict_stores
from sthist.tl._cross_validate import cross_validate
from sthist.tl._evaluate import evaluate, gene_gene_fidelity
from sthist.tl._export import to_anndata, to_spatialdata
from sthist.tl._fit import fit
from sthist.tl._localisation import auroc, localisation
from sthist.tl._predict import predict
from sthist.tl._reliability import gene_reliability
from sthist.tl._select import select_settings
from sthist.tl._tiles import predict_tiles, tile_grid

__all__ = [
    "auroc",
    "cross_validate",
    "evaluate",
    "fit",
    "gene_gene_fidelity",
    "gene_reliability",
    "localisation",
    "predict",
    "predict_stores",
    "predict_tiles",
    "select_settings",
    "tile_grid",
    "to_anndata",
    "to_spatialdata",
]
