"""Typed configuration of a model: the only home of sthist's defaults for patches, data, architecture and training.

Plain dataclasses without torch, so that ``pp`` and the command line can read the defaults cheaply. Each field
carries its help text in ``field(metadata=...)``: the classes' docstrings, :func:`sthist.tl.fit`'s
documentation and the command line's flags are generated from it, so that a default, its flag and its help
cannot drift apart. They are recorded in a saved model's ``config.json`` and read back from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self, dataclass_transform

import numpy as np

from sthist._constants import Key


def setting(*, default, help: str, **metadata) -> Any:
    """A configuration field: its default and the help text shown in docs and on the command line.

    Further ``metadata``: ``parse`` (a function turning the command line's text into a value; ``none`` is
    understood for optional fields) and ``aliases`` (more flag names, e.g. ``--epochs``).
    """
    return field(default=default, metadata={"help": help, **metadata})


@dataclass_transform(frozen_default=True, field_specifiers=(setting, field))
def documented(cls):
    """A frozen dataclass whose docstring gains an ``Attributes`` section from its fields' help texts."""
    cls = dataclass(frozen=True)(cls)
    lines = ["", "    Attributes", "    ----------"]
    for item in fields(cls):
        lines += [f"    {item.name}", f"        {item.metadata['help']} Default: ``{item.default!r}``."]
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls


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


def _flags(config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
        object.__setattr__(config, name, bool(value))


class _Record:
    """Conversion to and from the plain dict stored in ``config.json``."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    @classmethod
    def from_dict(cls, values: Mapping) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; known: {sorted(known)}.")
        return cls(**values)

    @classmethod
    def coerce(cls, value, name: str) -> Self:
        """``value`` as this config: an instance as it is, a mapping of its fields, or ``None`` (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(
            f"{name} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}."
        )


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("all", "none") else int(text)


def _ridge_alpha(text: str) -> float | str:
    return text if text in ("cv", "hest") else float(text)


@documented
class PatchConfig(_Record):
    """The patch of each spot: a square of ``size_um`` µm centred on it, resampled to ``size_px`` pixels.

    112 µm at 224 px is 0.5 µm/px, the HEST convention. ``size_px`` follows the encoder's input size.
    """

    size_um: float = setting(default=112.0, help="Side of each spot's patch in µm.")
    size_px: int = setting(
        default=224, help="Side of the patch after resampling, in pixels (the encoder's input size)."
    )

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


@documented
class DataConfig(_Record):
    """How training pairs are made from the sections: gene panel, normalisation, centring and stain."""

    n_top_genes: int | None = setting(
        default=250,
        help="Size of the HEG and HVG sets of the default panel (top genes by mean and by variance over the training "
        "sections); ``None`` (``all`` on the command line) keeps every gene detected in ≥ 10 % of the spots of "
        "every training section.",
        parse=_optional_int,
    )
    exclude_technical: bool = setting(
        default=False,
        help="Leave technical genes (mitochondrial, ribosomal-protein, MALAT1/NEAT1: :func:`sthist.pp.technical_genes`) "
        "out of the default panel, so that they cannot fill the top of HEG@50.",
    )
    layer: str = setting(
        default=Key.layers.NORMALIZED,
        help="Normalised expression layer; sections without it are normalised (log1p of counts per ``target_sum``) "
        "in a copy.",
    )
    target_sum: float = setting(
        default=1e4, help="Counts per spot that normalisation scales to before log1p."
    )
    center_expression: bool = setting(
        default=False,
        help="Shift each training section's expression to the mean over all training spots (targets and retrieval "
        "bank): the model learns variation within sections rather than differences between them (depth, "
        "patient).",
    )
    center_tokens: bool = setting(
        default=False,
        help="Frozen encoder: replace each section's mean encoder channel vector by the training mean, in training and "
        "(with the predicted section's own mean) at prediction, a feature-space normalisation of stain and "
        "scanner.",
    )
    stain_normalization: bool = setting(
        default=False,
        help="Map each section's colours onto the training sections' average before encoding (Reinhard, in lαβ); "
        "recorded in the model and applied to every section it predicts.",
    )

    def __post_init__(self):
        if self.n_top_genes is not None:
            _positive_integers(self, ("n_top_genes",))
            object.__setattr__(self, "n_top_genes", int(self.n_top_genes))
        _flags(self, ("exclude_technical", "center_expression", "center_tokens", "stain_normalization"))
        _non_negative_numbers(self, ("target_sum",), positive=("target_sum",))
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"layer must be the name of a layer, got {self.layer!r}.")


@documented
class ArchitectureConfig(_Record):
    """The trainable modules on top of the image tokens (CMRCNet, BLEEP, regression, ridge)."""

    embedding_dim: int = setting(
        default=256, help="Size d of the projected tokens and of the image and spot embeddings."
    )
    gene_tokens: int = setting(
        default=8, help="Gene tokens made from each expression vector (reconstruction branch)."
    )
    heads: int = setting(
        default=8,
        help="Attention heads of the reconstruction branch (``embedding_dim`` must be divisible by it).",
    )
    fusion_blocks: int = setting(
        default=1, help="Fusion blocks (self-attention + co-attention) of the reconstruction branch."
    )
    mask_ratio: float = setting(
        default=0.5,
        help="Fraction (0-1) of the entries of the projected image tokens masked before reconstruction.",
    )
    temperature: float = setting(default=1.0, help="Contrastive temperature τ.")
    dropout: float = setting(default=0.1, help="Dropout probability of heads and attention.")
    token_layers: int = setting(
        default=0,
        help="Trainable transformer layers over the projected token grid, shared by the contrastive and the "
        "reconstruction paths (0: none). Without positional embeddings, so that an encoded patch is invariant "
        "to the dihedral transforms of its token grid; with the encoder frozen they give the reconstruction "
        "branch something to shape.",
    )
    context_um: float | None = setting(
        default=300.0,
        help="Spatial context: each spot's tokens get one more, the mean token of the spots within this many µm of it "
        "(same section, itself included), projected on its own and added to the pooled image tokens (ridge: "
        "appended to the features), in training and at prediction. ``None`` (``none`` on the command line): "
        "the spot's patch alone.",
    )
    ridge_alpha: float | str = setting(
        default="cv",
        help="Ridge baseline's strength: ``'cv'`` (chosen by cross-validation over the training sections), "
        "``'hest'`` (the HEST-Benchmark protocol's fixed ``100 / (256 · n_genes)``) or a positive number.",
        parse=_ridge_alpha,
    )
    reconstruction_grid: int = setting(
        default=3,
        help="Side of the grid the projected image tokens are average-pooled to before the reconstruction branch "
        "(3: a 7 × 7 EfficientNet grid becomes 3 × 3 regional tokens; 0: every token). The branch's cost grows "
        "with its token count (``benchmarks/results/speed.md``); sequences that are not a square grid are "
        "pooled along the sequence.",
    )
    detach_target: bool = setting(
        default=False,
        help="Reconstruct a detached copy of the global image embedding: the reconstruction loss then trains the "
        "branch and the token layers through the masked tokens only.",
    )
    reconstruction_weight: float = setting(
        default=1.0,
        help="CMRCNet: weight of the mask-reconstruction loss, ``log(1 + reconstruction)``, beside the contrastive "
        "loss (0: no reconstruction branch).",
    )
    reconstruction_share: float = setting(
        default=0.5,
        help="CMRCNet: share (0-1] of each training batch's spots, drawn at random at every step, that the "
        "reconstruction branch reconstructs; the contrastive loss and the decoder see every spot. The branch "
        "costs most of a step on cached tokens, and its cost falls with the spots it reads "
        "(``benchmarks/results/speed.md``; 0.5 chosen by ``benchmarks/nested.py --round 6``).",
    )
    decoder_weight: float = setting(
        default=3.0,
        help="CMRCNet: weight of the expression decoder's loss, ``log(1 + MSE)``. The decoder (an MLP) regresses "
        "each spot's standardised expression from its pooled image representation (the input of the contrastive "
        "image head) and is trained with the "
        "contrastive and reconstruction losses (0: no decoder; predictions by retrieval alone).",
    )
    retrieval_weight: float = setting(
        default=0.75,
        help="CMRCNet with a decoder: share of retrieval in the prediction, ``w · retrieval + (1 − w) · decoder`` "
        "(1: retrieval alone, 0: the decoder alone). Retrieval averages the expression of measured spots, the "
        "decoder is sharper where morphology sets expression; they err differently.",
    )

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
        _non_negative_numbers(self, ("reconstruction_weight", "decoder_weight", "retrieval_weight"))
        if self.retrieval_weight > 1:
            raise ValueError(f"retrieval_weight must lie in [0, 1], got {self.retrieval_weight!r}.")
        _non_negative_numbers(self, ("reconstruction_share",), positive=("reconstruction_share",))
        if self.reconstruction_share > 1:
            raise ValueError(f"reconstruction_share must lie in (0, 1], got {self.reconstruction_share!r}.")
        if self.embedding_dim % self.heads:
            raise ValueError(
                f"embedding_dim ({self.embedding_dim}) must be divisible by heads ({self.heads})."
            )


@documented
class TrainingConfig(_Record):
    """How the trainable modules are optimised: AdamW with a cosine schedule, views and stain augmentation."""

    max_epochs: int = setting(default=30, help="Training epochs.", aliases=("--epochs",))
    batch_size: int = setting(default=64, help="Spots per batch.")
    learning_rate: float = setting(
        default=1e-3, help="AdamW learning rate at the start of the cosine schedule."
    )
    weight_decay: float = setting(default=1e-3, help="AdamW weight decay.")
    min_learning_rate: float = setting(default=1e-5, help="Learning rate at the end of the cosine schedule.")
    views: int = setting(
        default=4,
        help="Frozen encoder: dihedral views (1-8) of each patch encoded once and sampled during training.",
    )
    hed_jitter: float = setting(
        default=0.0,
        help="Stain augmentation strength σ (Tellez et al. 2018): haematoxylin, eosin and DAB concentrations are "
        "scaled by U(1 − σ, 1 + σ) and shifted by U(−σ, σ). Frozen encoder: views 1 and up are encoded "
        "jittered, once (so it needs ``views`` ≥ 2); fine-tuning jitters every patch it reads. 0: off.",
    )
    fine_tune: bool = setting(
        default=False,
        help="Train the encoder end to end on patches (GPU; mixed precision) instead of the frozen encoder on cached "
        "tokens. On cohorts of HER2ST's size it lowered held-out accuracy "
        "(``benchmarks/results/finetune_gpu.md``).",
    )

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
N_TOP_GENES = DataConfig.n_top_genes
K_NEIGHBOURS = 50
#: Settings of prediction recorded in each model, chosen per method by the nested search inside training
#: patients (``benchmarks/nested.py``, ``benchmarks/results/nested_round3.md``): CMRCNet averages its 20
#: nearest spots (BLEEP keeps 50), and the ridge baseline's predictions are smoothed over the spots within 350 µm.
METHOD_K = {"cmrcnet": 20}
METHOD_SMOOTH_UM = {"ridge": 350.0}


def default_k(method: str) -> int:
    """Retrieval neighbours of ``method`` when ``k`` is not given (its chosen setting, else ``K_NEIGHBOURS``)."""
    return METHOD_K.get(method, K_NEIGHBOURS)


def default_smooth_um(method: str) -> float:
    """Smoothing radius (µm) of ``method``'s predictions when not given; 0 means none."""
    return METHOD_SMOOTH_UM.get(method, 0.0)


#: Dihedral views predicted and averaged per patch by ``tl.predict`` (test-time augmentation), chosen for every
#: method by the nested search (``benchmarks/results/nested_defaults.md``).
TTA_VIEWS = 4
TARGET_SUM = DataConfig.target_sum
DEFAULT_BACKBONE = "efficientnet_lite0"
