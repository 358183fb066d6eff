"""A model's configuration as typed records, converted to and from the ``config.json`` dict at the file boundary.

:class:`ModelConfig` is what :attr:`sthist.models.SthistModel.config` holds: the data contract (genes,
normalisation, patch, µm/px of the training sections, backbone), the method's settings and what training and
reliability assessment recorded. ``to_dict()`` gives the layout ``config.json`` stores (unchanged across this
typed view) and ``from_dict()`` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sthist._core._config import ArchitectureConfig, PatchConfig, TrainingConfig, _Record

#: Normalisation record of a model that predates the ``units`` entry.
DEFAULT_UNITS = "log1p normalised counts"


@dataclass(frozen=True)
class BackboneRecord(_Record):
    """The image encoder a model was built on: its name, weights and their identity, licence, normalisation."""

    name: str
    weights: str | None = None
    weights_identity: str | None = None
    licence: str | None = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    fine_tuned: bool = False

    @property
    def identity(self) -> str:
        """Encoder name and weights identity: what a token cache keys encoded patches by."""
        return f"{self.name}|{self.weights_identity}"


@dataclass(frozen=True)
class PanelRecord(_Record):
    """How the gene panel was chosen: its size per flavour, technical genes left out, given explicitly."""

    n_top_genes: int | None = None
    exclude_technical: bool = False
    explicit: bool = False


@dataclass(frozen=True)
class NormalisationRecord:
    """The normalised layer a model was trained on and the record :func:`sthist.pp.normalize` wrote for it."""

    layer: str
    target_sum: float | None = None
    #: Units of the layer as the record names them (``None`` in records that predate the entry).
    units: str | None = None
    #: Further entries of the normalisation record (method, counts source), kept as written.
    details: dict = field(default_factory=dict)

    @property
    def unit_label(self) -> str:
        """The units predictions are written in."""
        return self.units or DEFAULT_UNITS

    def to_dict(self) -> dict:
        optional = {"target_sum": self.target_sum, "units": self.units}
        return {"layer": self.layer, **self.details, **{k: v for k, v in optional.items() if v is not None}}

    @classmethod
    def from_dict(cls, values: Mapping) -> NormalisationRecord:
        values = dict(values)
        layer = values.pop("layer")
        target_sum, units = values.pop("target_sum", None), values.pop("units", None)
        return cls(layer=layer, target_sum=target_sum, units=units, details=values)


@dataclass(frozen=True)
class CenteringRecord(_Record):
    """Whether expression and tokens are centred per section."""

    expression: bool = False
    tokens: bool = False


@dataclass(frozen=True)
class ReliabilityRecord:
    """Cross-validated Pearson r per gene (``None`` where undefined), the threshold and what folds left out."""

    genes: dict[str, float | None]
    threshold: float
    groups: str | None = None

    def unreliable(self, genes: list[str]) -> list[str]:
        """The genes of ``genes`` whose r is below the threshold or undefined."""
        return [g for g in genes if self.genes.get(g) is None or self.genes[g] < self.threshold]  # type: ignore[operator]


#: config.json keys of the reliability record (top level, for compatibility with saved models).
_RELIABILITY_KEYS = {
    "gene_reliability": "genes",
    "reliability_threshold": "threshold",
    "reliability_groups": "groups",
}


@dataclass
class ModelConfig:
    """Everything a fitted model records about itself; ``to_dict()`` is what ``config.json`` holds."""

    format_version: int
    versions: dict[str, str]
    method: str
    genes: list[str]
    normalization: NormalisationRecord
    patch: PatchConfig
    backbone: BackboneRecord
    architecture: ArchitectureConfig
    #: Width of the encoder's tokens and number of genes predicted (stored with the architecture).
    token_dim: int
    n_genes: int
    panel: PanelRecord = field(default_factory=PanelRecord)
    microns_per_pixel: dict[str, float | None] = field(default_factory=dict)
    #: Resolution (µm/px) of the image level each training section's patches were read from: what new
    #: sections are compared with (empty in models saved before it was recorded).
    image_microns_per_pixel: dict[str, float] = field(default_factory=dict)
    training: TrainingConfig | None = None
    centering: CenteringRecord = field(default_factory=CenteringRecord)
    #: Stain normalisation: ``{'method', 'reference', 'sections'}`` (statistics as dicts), or ``None``.
    stain: dict | None = None
    k: int = 50
    smooth_um: float = 0.0
    qc_column: str | None = None
    seed: int = 0
    training_sections: dict[str, int] = field(default_factory=dict)
    reference_spots: int | None = None
    reliability: ReliabilityRecord | None = None
    weights_sha256: str | None = None
    #: Entries this version does not know (from a newer minor version), written back as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The plain dict of ``config.json`` (JSON types only)."""
        record: dict[str, Any] = {
            "format_version": self.format_version,
            "versions": dict(self.versions),
            "method": self.method,
            "genes": list(self.genes),
            "panel": self.panel.to_dict(),
            "normalization": self.normalization.to_dict(),
            "patch": self.patch.to_dict(),
            "microns_per_pixel": dict(self.microns_per_pixel),
            **(
                {"image_microns_per_pixel": dict(self.image_microns_per_pixel)}
                if self.image_microns_per_pixel
                else {}
            ),
            "backbone": self.backbone.to_dict(),
            "architecture": {
                "token_dim": self.token_dim,
                "n_genes": self.n_genes,
                **self.architecture.to_dict(),
            },
            "training": None if self.training is None else self.training.to_dict(),
            "centering": self.centering.to_dict(),
            "stain": self.stain,
            "k": self.k,
            "smooth_um": self.smooth_um,
            "qc_column": self.qc_column,
            "seed": self.seed,
            "training_sections": dict(self.training_sections),
            "reference_spots": self.reference_spots,
        }
        if self.reliability is not None:
            for key, name in _RELIABILITY_KEYS.items():
                record[key] = getattr(self.reliability, name)
        if self.weights_sha256 is not None:
            record["weights_sha256"] = self.weights_sha256
        return {**record, **self.extra}

    @classmethod
    def from_dict(cls, values: Mapping) -> ModelConfig:
        """Read the dict of ``config.json`` (current format; :func:`upgrade_config` converts older ones)."""
        values = dict(values)
        architecture = dict(values.pop("architecture"))
        sizes = {"token_dim": architecture.pop("token_dim"), "n_genes": architecture.pop("n_genes")}
        reliability = {name: values.pop(key) for key, name in _RELIABILITY_KEYS.items() if key in values}
        training = values.pop("training", None)
        known = {f.name for f in fields(cls)}
        typed: dict[str, Any] = {
            "normalization": NormalisationRecord.from_dict(values.pop("normalization")),
            "patch": PatchConfig.from_dict(values.pop("patch")),
            "backbone": BackboneRecord.from_dict(values.pop("backbone")),
            "panel": PanelRecord.from_dict(values.pop("panel", {})),
            "centering": CenteringRecord.from_dict(values.pop("centering", None) or {}),
            "architecture": ArchitectureConfig.from_dict(architecture),
            "training": None if training is None else TrainingConfig.from_dict(training),
            "reliability": ReliabilityRecord(**reliability) if "genes" in reliability else None,
        }
        plain: dict[str, Any] = {k: v for k, v in values.items() if k in known}
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(**plain, **typed, **sizes, extra=extra)
