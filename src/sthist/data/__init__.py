"""Torch datasets over SpatialData: spot-centred patches paired with expression."""

from sthist.data._patches import SpotPatchDataset, dihedral

__all__ = ["SpotPatchDataset", "dihedral"]
