"""The fitted model users hold: encoder + trained modules + reference bank, its data contract, save/load."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch

from sthist._logging import logger
from sthist.models._backbones import ImageEncoder, create_encoder, file_sha256
from sthist.models._modules import ExpressionModel
from sthist.models._ridge import predict_ridge

#: Version of the saved-model folder layout; loading refuses newer formats.
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METHODS = ("cmrcnet", "bleep", "regression", "ridge")


class SthistModel:
    """A fitted expression-from-histology model.

    Holds the image encoder, the trained modules (or ridge coefficients), the reference bank used for
    retrieval (training spots' expression embeddings and expression) and ``config``, the data contract:
    gene panel, normalisation, patch geometry (µm, px), µm/px of the training sections, backbone and the
    identity of its weights, hyperparameters, seed and training sections.
    """

    def __init__(
        self,
        config: dict,
        encoder: ImageEncoder,
        model: ExpressionModel | None,
        tensors: dict[str, torch.Tensor],
        history: list[dict] | None = None,
    ):
        self.config = config
        self.encoder = encoder.eval()
        self.model = None if model is None else model.eval()
        self.tensors = tensors
        self.history = history or []

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def genes(self) -> list[str]:
        return list(self.config["genes"])

    @property
    def unreliable_genes(self) -> list[str]:
        """Genes whose cross-validated Pearson r is below the recorded threshold (empty if never assessed)."""
        reliability = self.config.get("gene_reliability")
        if not reliability:
            return []
        threshold = self.config.get("reliability_threshold", 0.1)
        return [g for g in self.genes if reliability.get(g) is None or reliability[g] < threshold]

    @property
    def k(self) -> int:
        return int(self.config["hyperparameters"]["k"])

    def __repr__(self) -> str:
        return (
            f"SthistModel(method={self.method!r}, backbone={self.config['backbone']['name']!r}, "
            f"genes={len(self.genes)}, reference spots={self.config.get('reference_spots')}, "
            f"patch={self.config['patch']['size_um']:g} µm)"
        )

    @torch.inference_mode()
    def predict_tokens(
        self, tokens: torch.Tensor, *, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expression (spots × genes, log1p units) and its spread over the retrieved neighbours from tokens.

        Retrieval methods average the expression of the ``k`` reference spots whose expression embeddings
        are most similar (cosine) to the patch's image embedding; the spread is their standard deviation.
        Regression and ridge give no spread (NaN).
        """
        if self.method == "ridge":
            prediction = predict_ridge(self.tensors, tokens.float().mean(dim=1))
            return prediction, torch.full_like(prediction, float("nan"))
        if self.method == "regression":
            prediction = self.model.regress(tokens)
            return prediction, torch.full_like(prediction, float("nan"))
        k = self.k if k is None else int(k)
        query = torch.nn.functional.normalize(self.model.image_embedding(tokens), dim=1)
        neighbours = retrieve(query, self.tensors["bank.embeddings"], k)
        expression = self.tensors["bank.expression"][neighbours]  # (spots, k, genes)
        return expression.mean(dim=1), expression.std(dim=1, unbiased=False)

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (refuses to replace them unless asked)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not overwrite and any((folder / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            raise FileExistsError(f"{folder} already holds a saved model; pass overwrite=True to replace it.")
        tensors = {f"encoder.{k}": v for k, v in self.encoder.model.state_dict().items()}
        if self.model is not None:
            tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        tensors.update(self.tensors)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, folder / WEIGHTS_FILE)
        config = dict(self.config)
        config["weights_sha256"] = file_sha256(folder / WEIGHTS_FILE)
        config["history"] = self.history
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        logger.info("saved model to %s", folder)
        return folder


def retrieve(query: torch.Tensor, bank: torch.Tensor, k: int, *, chunk: int = 1024) -> torch.Tensor:
    """Indices (queries × k) of the ``k`` most similar bank rows by dot product (cosine for unit vectors)."""
    if k > len(bank):
        raise ValueError(f"k={k} exceeds the {len(bank)} spots of the reference bank; choose a smaller k.")
    out = torch.empty((len(query), k), dtype=torch.long)
    for start in range(0, len(query), chunk):
        out[start : start + chunk] = (query[start : start + chunk] @ bank.T).topk(k, dim=1).indices
    return out


def versions() -> dict[str, str]:
    return {name: version(name) for name in ("sthist", "torch", "timm")}


def load(folder: str | Path) -> SthistModel:
    """Read a model saved by :meth:`SthistModel.save`, validating format, files, checksum and contents."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete sthist model: missing {missing}.")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}).") from error
    for key in (
        "format_version",
        "method",
        "genes",
        "backbone",
        "patch",
        "hyperparameters",
        "weights_sha256",
    ):
        if key not in config:
            raise ValueError(f"{config_path} lacks {key!r}; it was not written by sthist or is damaged.")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{folder} was saved in model format {config['format_version']} by sthist "
            f"{config.get('versions', {}).get('sthist', '?')}; this sthist reads format {FORMAT_VERSION} and "
            "older. Upgrade sthist."
        )
    if config["method"] not in METHODS:
        raise ValueError(f"{config_path}: unknown method {config['method']!r}.")
    if file_sha256(weights_path) != config["weights_sha256"]:
        raise ValueError(
            f"{weights_path} does not match the checksum recorded in {CONFIG_FILE}: the weights were changed or "
            "damaged after saving."
        )
    try:
        tensors = load_file(weights_path)
    except SafetensorError as error:
        raise ValueError(f"{weights_path} is not a valid safetensors file ({error}).") from error
    backbone = config["backbone"]
    encoder = create_encoder(backbone["name"], pretrained=False)
    encoder.model.load_state_dict(_take(tensors, "encoder."), strict=True)
    model = None
    if config["method"] != "ridge":
        model = ExpressionModel(method=config["method"], **config["architecture"])
        model.load_state_dict(_take(tensors, "model."), strict=True)
    history = config.pop("history", [])
    return SthistModel(config, encoder, model, tensors, history)


def _take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    taken = {k.removeprefix(prefix): tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
    return taken
