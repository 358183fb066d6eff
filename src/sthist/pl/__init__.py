"""Plots: expression and uncertainty on tissue, per-gene and gene–gene accuracy, cross-validation, training."""

from sthist.pl._expression import expression, uncertainty
from sthist.pl._scores import cross_validation, gene_correlation, gene_scores, training_curves

__all__ = [
    "cross_validation",
    "expression",
    "gene_correlation",
    "gene_scores",
    "training_curves",
    "uncertainty",
]
