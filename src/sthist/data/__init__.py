"""Torch datasets over SpatialData: spot-centred patches paired with expression, cached encoder tokens."""

from sthist.data._features import TokenCache, TokenDataset, encode_patches, tokens_of
from sthist.data._patches import SpotPatchDataset, dihedral

__all__ = ["SpotPatchDataset", "TokenCache", "TokenDataset", "dihedral", "encode_patches", "tokens_of"]
