"""Torch datasets over SpatialData: spot-centred patches paired with expression, cached encoder tokens."""

from sthist.data._features import (
    TokenCache,
    TokenDataset,
    add_context,
    encode_patches,
    is_token_summary,
    summarise_tokens,
    tokens_of,
)
from sthist.data._patches import SpotPatchDataset, dihedral

__all__ = [
    "SpotPatchDataset",
    "TokenCache",
    "TokenDataset",
    "add_context",
    "dihedral",
    "encode_patches",
    "is_token_summary",
    "summarise_tokens",
    "tokens_of",
]
