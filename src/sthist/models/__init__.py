"""Models: backbone registry over timm, CMRCNet modules and baselines, the fitted model with save/load."""

from sthist.models._backbones import (
    BackboneConfig,
    ImageEncoder,
    available_backbones,
    create_encoder,
    get_backbone_config,
    register_backbone,
)
from sthist.models._model import SthistModel, load, retrieve
from sthist.models._modules import ExpressionModel, bleep_loss, gather_with_grad

__all__ = [
    "BackboneConfig",
    "ExpressionModel",
    "ImageEncoder",
    "SthistModel",
    "available_backbones",
    "bleep_loss",
    "create_encoder",
    "gather_with_grad",
    "get_backbone_config",
    "load",
    "register_backbone",
    "retrieve",
]
