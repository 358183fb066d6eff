"""Tools: fit a model on measured sections, predict expression at spots."""

from sthist.tl._fit import fit
from sthist.tl._predict import predict

__all__ = ["fit", "predict"]
