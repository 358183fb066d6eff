"""Plots: expression and uncertainty on tissue, spot QC, tile maps, per-gene and gene–gene accuracy, training.

Whole-slide tile maps, cross-validation summaries and training curves included.
"""

from sthist.pl._expression import expression, uncertainty
from sthist.pl._qc import qc
from sthist.pl._scores import cross_validation, gene_correlation, gene_scores, training_curves
from sthist.pl._tiles import tiles

__all__ = [
    "cross_validation",
    "expression",
    "gene_correlation",
    "gene_scores",
    "qc",
    "tiles",
    "training_curves",
    "uncertainty",
]
