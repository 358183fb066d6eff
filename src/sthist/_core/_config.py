"""Typed configuration of a model: the only home of sthist's defaults for patches, architecture and training.

Plain dataclasses without torch, so that ``pp`` and the command line can read the defaults cheaply. They are
recorded in a saved model's ``config.json`` and read back from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np


def _positive_integers(config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not is_positive_integer(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def is_positive_integer(value) -> bool:
    """Whether ``value`` is an integer ≥ 1 (an int or an integral float; not a bool, NaN or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value) and int(value) == value and value >= 1)


def _non_negative_numbers(config, names: tuple[str, ...], *, positive: tuple[str, ...] = ()) -> None:
    for name in names:
        value = getattr(config, name)
        valid = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
        if not valid or not np.isfinite(value) or value < 0 or (name in positive and value == 0):
            kind = "a positive" if name in positive else "a non-negative"
            raise ValueError(f"{name} must be {kind} finite number, got {value!r}.")


class _Record:
    """Conversion to and from the plain dict stored in ``config.json``."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; known: {sorted(known)}.")
        return cls(**values)


@dataclass(frozen=True)
class PatchConfig(_Record):
    """The patch of each spot: a square of ``size_um`` µm centred on it, resampled to ``size_px`` pixels.

    112 µm at 224 px is 0.5 µm/px, the HEST convention. ``size_px`` follows the encoder's input size.
    """

    size_um: float = 112.0
    size_px: int = 224

    def __post_init__(self):
        if not np.isfinite(self.size_um) or self.size_um <= 0:
            raise ValueError(f"patch_size_um must be a positive number of µm, got {self.size_um!r}.")
        if int(self.size_px) != self.size_px or self.size_px < 8:
            raise ValueError(f"patch_size_px must be an integer of at least 8 pixels, got {self.size_px!r}.")
        object.__setattr__(self, "size_um", float(self.size_um))
        object.__setattr__(self, "size_px", int(self.size_px))

    @property
    def microns_per_pixel(self) -> float:
        """Resolution of the resampled patch (µm/px)."""
        return self.size_um / self.size_px


@dataclass(frozen=True)
class ArchitectureConfig(_Record):
    """The trainable modules on top of the image tokens (CMRCNet, BLEEP, regression).

    Attributes
    ----------
    embedding_dim
        Size d of the projected tokens and of the image and spot embeddings.
    gene_tokens
        Gene tokens made from each expression vector (reconstruction branch).
    heads
        Attention heads of the reconstruction branch (``embedding_dim`` must be divisible by it).
    fusion_blocks
        Fusion blocks (self-attention + co-attention) of the reconstruction branch.
    mask_ratio
        Fraction (0-1) of the entries of the projected image tokens masked before reconstruction.
    temperature
        Contrastive temperature τ.
    dropout
        Dropout probability of heads and attention.
    token_layers
        Trainable transformer layers over the projected token grid, shared by the contrastive and the
        reconstruction paths (0: none, the tokens are only projected). Without positional embeddings, so the
        encoded patch is invariant to the dihedral transforms of its token grid. With the encoder frozen
        (the fast path) they give the reconstruction branch something to shape.
    context_um
        Spatial context: each spot's tokens get one more token, the mean token of the spots within this many
        µm of it (same section, itself included), projected on its own and added to the pooled image tokens
        (ridge: appended to the features). ``None``: the spot's patch alone.
    ridge_alpha
        Ridge baseline's strength: ``'cv'`` (chosen by cross-validation over the training sections, the
        default), ``'hest'`` (the HEST-Benchmark protocol's fixed ``100 / (256 · n_genes)``, nearly no
        regularisation) or a positive number.
    reconstruction_grid
        Side of the grid the projected image tokens are average-pooled to before the reconstruction branch
        (3: a 7 × 7 EfficientNet grid becomes 3 × 3 regional tokens; 0: every token). The branch's cost grows
        with its token count: with 3 × 3 regions CMRCNet's fit on cached tokens takes about 3.6× BLEEP's
        (``benchmarks/speed.py``), and more over every token. Token sequences that are not a square grid are
        pooled along the sequence.
    detach_target
        Reconstruct a detached copy of the global image embedding: the reconstruction loss then trains the
        branch and the token layers through the masked tokens only, and cannot pull the embedding the
        contrastive loss aligns towards whatever is easiest to reconstruct.
    """

    embedding_dim: int = 256
    gene_tokens: int = 8
    heads: int = 8
    fusion_blocks: int = 1
    mask_ratio: float = 0.5
    temperature: float = 1.0
    dropout: float = 0.1
    token_layers: int = 0
    context_um: float | None = 300.0
    ridge_alpha: float | str = "cv"
    reconstruction_grid: int = 3
    detach_target: bool = False

    def __post_init__(self):
        _positive_integers(self, ("embedding_dim", "gene_tokens", "heads", "fusion_blocks"))
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio}.")
        if (
            isinstance(self.token_layers, bool)
            or int(self.token_layers) != self.token_layers
            or self.token_layers < 0
        ):
            raise ValueError(f"token_layers must be a non-negative integer, got {self.token_layers!r}.")
        if self.context_um is not None:
            number = isinstance(self.context_um, (int, float, np.number)) and not isinstance(
                self.context_um, bool
            )
            if not number or not np.isfinite(self.context_um) or self.context_um <= 0:
                raise ValueError(
                    f"context_um must be a positive distance in µm (or None), got {self.context_um!r}."
                )
            object.__setattr__(self, "context_um", float(self.context_um))
        alpha = self.ridge_alpha
        if alpha not in ("cv", "hest") and (
            not isinstance(alpha, (int, float))
            or isinstance(alpha, bool)
            or not np.isfinite(alpha)
            or alpha <= 0
        ):
            raise ValueError(f"ridge_alpha must be 'cv', 'hest' or a positive number, got {alpha!r}.")
        grid = self.reconstruction_grid
        if isinstance(grid, bool) or int(grid) != grid or grid < 0:
            raise ValueError(f"reconstruction_grid must be a non-negative integer, got {grid!r}.")
        if self.embedding_dim % self.heads:
            raise ValueError(
                f"embedding_dim ({self.embedding_dim}) must be divisible by heads ({self.heads})."
            )


@dataclass(frozen=True)
class TrainingConfig(_Record):
    """How the trainable modules are optimised.

    Attributes
    ----------
    max_epochs, batch_size, learning_rate, weight_decay, min_learning_rate
        AdamW with a cosine schedule from ``learning_rate`` to ``min_learning_rate`` over ``max_epochs``.
    views
        Fast path: dihedral views (1-8) of each patch encoded once and sampled during training.
    hed_jitter
        Stain augmentation strength σ (Tellez et al. 2018): haematoxylin, eosin and DAB concentrations of a
        patch are scaled by U(1 − σ, 1 + σ) and shifted by U(−σ, σ). On the fast path views 1 and up are
        encoded jittered (view 0 stays as scanned, so it needs ``views`` ≥ 2); fine-tuning draws a new jitter
        for every patch it reads. 0 turns it off.
    fine_tune
        Train the encoder end to end on patches instead of the fast path (frozen encoder, cached tokens).
    """

    max_epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    min_learning_rate: float = 1e-5
    views: int = 4
    hed_jitter: float = 0.0
    fine_tune: bool = False

    def __post_init__(self):
        _positive_integers(self, ("max_epochs", "batch_size", "views"))
        _non_negative_numbers(
            self, ("learning_rate", "weight_decay", "min_learning_rate"), positive=("learning_rate",)
        )
        if self.views > 8:
            raise ValueError(f"views must be between 1 and 8 (dihedral transforms), got {self.views}.")
        jitter = self.hed_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ValueError(
                f"hed_jitter must be a number in [0, 1) (0: off; 0.05 is light), got {jitter!r}."
            )
        if jitter and self.views < 2 and not self.fine_tune:
            raise ValueError(
                f"hed_jitter={jitter} needs views >= 2 on the fast path: view 0 is encoded as scanned and views 1 "
                "and up carry the jitter. Raise views or set hed_jitter=0."
            )
        object.__setattr__(self, "hed_jitter", float(jitter))


#: Names of the methods, in the order tables and plots list them (``sthist.models.METHODS`` implements them;
#: kept here so that listing them imports no torch).
METHOD_NAMES = ("cmrcnet", "bleep", "regression", "ridge")
#: Default gene panel size (top genes by mean and by variance), retrieval neighbours and normalisation.
N_TOP_GENES = 250
K_NEIGHBOURS = 50
#: Settings of prediction recorded in each model, chosen per method by ``benchmarks/nested.py`` (round 3, searched
#: over all patients; ``benchmarks/results/nested_round3.md``): CMRCNet averages its 20 nearest spots (BLEEP
#: keeps 50), and the ridge baseline's predictions are smoothed over the spots within 350 µm.
METHOD_K = {"cmrcnet": 20}
METHOD_SMOOTH_UM = {"ridge": 350.0}


def default_k(method: str) -> int:
    """Retrieval neighbours of ``method`` when ``k`` is not given (its chosen setting, else ``K_NEIGHBOURS``)."""
    return METHOD_K.get(method, K_NEIGHBOURS)


def default_smooth_um(method: str) -> float:
    """Smoothing radius (µm) of ``method``'s predictions when not given; 0 means none."""
    return METHOD_SMOOTH_UM.get(method, 0.0)


#: Dihedral views predicted and averaged per patch by ``tl.predict`` (test-time augmentation), chosen by
#: ``benchmarks/nested.py`` (round 2) for every method.
TTA_VIEWS = 4
TARGET_SUM = 1e4
DEFAULT_BACKBONE = "efficientnet_lite0"
