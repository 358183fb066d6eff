"""Torch datasets over SpatialData: spot-centred patches paired with expression, cached encoder tokens."""

from sthist.data._features import (
    TokenCache,
    TokenDataset,
    add_context,
    chunk_tokens,
    encode_patches,
    is_token_summary,
    summarise_tokens,
    tokens_of,
)
from sthist.data._patches import SpotPatchDataset, dihedral
from sthist.data._precomputed import PrecomputedFeatures

__all__ = [
    "PrecomputedFeatures",
    "SpotPatchDataset",
    "TokenCache",
    "TokenDataset",
    "add_context",
    "chunk_tokens",
    "dihedral",
    "encode_patches",
    "is_token_summary",
    "summarise_tokens",
    "tokens_of",
]
