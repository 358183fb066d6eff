"""Models: backbone registry over timm, CMRCNet modules and baselines, the user-facing model with train/save/load.

Three layers: torch modules (:class:`ContrastiveModel`, :class:`RegressionModel`), the Lightning training
plan, and :class:`SthistModel`, which owns the data contract; one :class:`Method` per method says what
differs between CMRCNet, BLEEP, regression and ridge.
"""

from sthist._core._config import ArchitectureConfig, DataConfig, PatchConfig, TrainingConfig
from sthist.models._backbones import (
    BackboneConfig,
    ImageEncoder,
    available_backbones,
    create_encoder,
    get_backbone_config,
    register_backbone,
    timm_backbone,
)
from sthist.models._config import ModelConfig, ReliabilityRecord
from sthist.models._methods import METHODS, Method, get_method, retrieve
from sthist.models._model import SthistModel
from sthist.models._modules import ContrastiveModel, RegressionModel, bleep_loss, gather_with_grad
from sthist.models._save_load import load

__all__ = [
    "METHODS",
    "ArchitectureConfig",
    "BackboneConfig",
    "ContrastiveModel",
    "DataConfig",
    "ImageEncoder",
    "Method",
    "ModelConfig",
    "PatchConfig",
    "RegressionModel",
    "ReliabilityRecord",
    "SthistModel",
    "TrainingConfig",
    "available_backbones",
    "bleep_loss",
    "create_encoder",
    "gather_with_grad",
    "get_backbone_config",
    "get_method",
    "load",
    "register_backbone",
    "retrieve",
    "timm_backbone",
]
