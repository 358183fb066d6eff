"""Saving and loading models: a folder of ``config.json`` + ``model.safetensors``, written atomically.

The model is written completely into a staging folder beside its destination and swapped in by renames; the
config's digest is kept in the weights file and the weights' checksum in the config, so that neither can change
unnoticed. Loading validates the format, files, checksum and contents before anything is built, and converts
older formats.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sthist._constants import Key
from sthist._core._config import PatchConfig
from sthist._logging import logger
from sthist.models._backbones import create_encoder, file_sha256
from sthist.models._config import ModelConfig
from sthist.models._methods import get_method

if TYPE_CHECKING:
    from sthist.models._model import SthistModel

#: Version of the saved-model folder layout; loading refuses newer formats and converts older ones.
FORMAT_VERSION = 3
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Metadata entry of the weights file holding the digest of the config (format 3 on).
CONFIG_DIGEST = Key.checkpoint.CONFIG_DIGEST
_SAVING, _REPLACED = ".sthist-saving-", ".sthist-replaced-"
#: Entries every saved config has, whatever its format.
_REQUIRED = ("format_version", "method", "genes", "backbone", "patch", "architecture", "weights_sha256")


def versions() -> dict[str, str]:
    """Versions of the packages a saved model depends on."""
    return {name: version(name) for name in ("sthist", "torch", "timm")}


def save_model(model: SthistModel, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained model into ``folder`` (see :meth:`sthist.models.SthistModel.save`)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from safetensors.torch import save_file

    if not model.is_trained:
        raise ValueError("The model is not trained yet; call model.train() before saving it.")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; choose a folder for the model.")
    _recover_save(folder)
    if not overwrite and any((folder / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE)):
        raise FileExistsError(f"{folder} already holds a saved model; pass overwrite=True to replace it.")
    if getattr(rank_zero_only, "rank", 0) != 0:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}{_SAVING}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        tensors = {f"encoder.{k}": v for k, v in model.encoder.model.state_dict().items()}
        if model.module is not None:
            tensors.update({f"model.{k}": v for k, v in model.module.state_dict().items()})
        tensors.update(model.tensors)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        config = model.config.to_dict()
        config.pop("weights_sha256", None)
        config = json.loads(json.dumps({**config, "history": model.history}))
        save_file(tensors, staging / WEIGHTS_FILE, metadata={CONFIG_DIGEST: config_digest(config)})
        config["weights_sha256"] = file_sha256(staging / WEIGHTS_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        _apply_umask(staging)
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved model to %s", folder)
    return folder


def load(folder: str | Path) -> SthistModel:
    """Read a model saved by :meth:`SthistModel.save`, validating format, files, checksum and contents."""
    from sthist.models._model import SthistModel

    folder = Path(folder)
    with contextlib.suppress(OSError):  # a read-only location: read what is there
        _recover_save(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder holding a saved sthist model.")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete sthist model: missing {missing}.")
    raw = _read_config(config_path, folder)
    tensors = _read_weights(weights_path, raw, folder)
    raw = upgrade_config(raw)
    _check_config(raw, config_path)
    history = raw.pop("history", [])
    try:
        config = ModelConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: invalid contents ({error}); the file is damaged.") from None
    encoder, module = _build_parts(config, tensors, weights_path)
    return SthistModel._restore(config, encoder, module, tensors, history)


def _read_config(config_path: Path, folder: Path) -> dict:
    """The JSON of ``config.json``, refused when damaged, incomplete or of a newer format."""
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} does not hold a model config (a JSON object).")
    for key in _REQUIRED:
        if key not in config:
            raise ValueError(f"{config_path} lacks {key!r}; it was not written by sthist or is damaged.")
    found = config["format_version"]
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ValueError(
            f"{config_path}: format_version must be a positive integer, got {found!r}; the file is damaged."
        )
    if found > FORMAT_VERSION:
        raise ValueError(
            f"{folder} was saved in model format {found} by sthist "
            f"{config.get('versions', {}).get('sthist', '?')}; this sthist reads format {FORMAT_VERSION} and "
            "older. Upgrade sthist."
        )
    try:
        get_method(config["method"])
    except (ValueError, TypeError) as error:
        raise ValueError(f"{config_path}: unknown method {config['method']!r}.") from error
    return config


def _read_weights(weights_path: Path, config: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, checked against the checksum and the digest of the config."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if file_sha256(weights_path) != config["weights_sha256"]:
        raise ValueError(
            f"{weights_path} does not match the checksum recorded in {CONFIG_FILE}: the weights were changed or "
            "damaged after saving."
        )
    try:
        with safe_open(weights_path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(weights_path)
    except SafetensorError as error:
        raise ValueError(f"{weights_path} is not a valid safetensors file ({error}).") from error
    if config["format_version"] >= 3:
        if metadata.get(CONFIG_DIGEST) != config_digest(config):
            raise ValueError(
                f"{folder / CONFIG_FILE} was changed after saving (its digest no longer matches the one kept in "
                f"{WEIGHTS_FILE}); an edited config (gene order, patch size) would mislabel predictions. Use the "
                "config as saved, or fit and save the model again."
            )
    else:
        logger.warning(
            "%s was saved in model format %d, before configs were protected by a digest; save it again to protect it.",
            folder,
            config["format_version"],
        )
    return tensors


def _build_parts(config: ModelConfig, tensors: dict[str, torch.Tensor], weights_path: Path):
    """Encoder and trainable module of a saved model, with their weights taken out of ``tensors``."""
    method = get_method(config.method)
    encoder = create_encoder(config.backbone.name, pretrained=False)
    sizes = {"token_dim": config.token_dim, "n_genes": config.n_genes}
    try:
        encoder.model.load_state_dict(_take(tensors, "encoder."), strict=True)
        module = method.build(**sizes, architecture=config.architecture)
        if module is not None:
            module.load_state_dict(_take(tensors, "model."), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{weights_path} does not fit the model its config describes: {first}") from None
    method.check_state(tensors, **sizes, architecture=config.architecture, source=str(weights_path))
    if config.centering.tokens and tuple(tensors.get("tokens.mean", torch.empty(0)).shape) != (
        config.token_dim,
    ):
        raise ValueError(f"{weights_path} lacks the training mean of the tokens that this model centres on.")
    return encoder, module


def upgrade_config(config: dict) -> dict:
    """Convert the config of an older saved model to the current layout (formats 1 and 2 → 3).

    Settings added since a model was saved get the value it was trained with (a reconstruction branch over
    every token, no expression decoder).
    """
    config = dict(config)
    if "architecture" in config:
        added = {
            "reconstruction_grid": 0, "ridge_alpha": "hest", "reconstruction_weight": 1.0,
            "decoder_weight": 0.0, "retrieval_weight": 1.0, "reconstruction_share": 1.0,
        }  # fmt: skip
        config["architecture"] = {**added, **config["architecture"]}
    if config.get("format_version", FORMAT_VERSION) >= 2:
        return {**config, "format_version": FORMAT_VERSION}
    hyper = dict(config.pop("hyperparameters"))
    architecture = dict(config["architecture"])
    architecture["embedding_dim"] = architecture.pop("dim")
    config["architecture"] = architecture
    config["k"] = int(hyper.pop("k"))
    config["qc_column"] = hyper.pop("qc_column", None)
    hyper["fine_tune"] = bool(config["backbone"].get("fine_tuned", False))
    config["training"] = hyper
    config["centering"] = {"expression": False, "tokens": False}
    config["format_version"] = FORMAT_VERSION
    return config


def _check_config(config: dict, source: Path) -> None:
    """Refuse configs whose contents cannot describe a model (checked before anything is built)."""
    genes = config["genes"]
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        raise ValueError(f"{source}: 'genes' must be a non-empty list of gene names.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"{source}: 'genes' names some genes twice; the file is damaged.")
    try:
        PatchConfig.from_dict(config["patch"])
        n_genes = config["architecture"]["n_genes"]
        token_dim = config["architecture"]["token_dim"]
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{source}: invalid patch or architecture ({error}).") from None
    if n_genes != len(genes):
        raise ValueError(
            f"{source}: the architecture predicts {n_genes} genes but 'genes' names {len(genes)}."
        )
    if isinstance(token_dim, bool) or not isinstance(token_dim, int) or token_dim < 1:
        raise ValueError(f"{source}: architecture token_dim must be a positive integer, got {token_dim!r}.")


def config_digest(config: dict) -> str:
    """SHA-256 of a model config in canonical JSON, without the weights' checksum (which it protects)."""
    content = {k: v for k, v in config.items() if k != "weights_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _apply_umask(folder: Path) -> None:
    """Give ``folder`` and its files the permissions the process's umask allows (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def _swap_in(staging: Path, folder: Path) -> None:
    """Move the complete new model in ``staging`` to ``folder``; the old folder is moved aside, then merged back.

    Files of the old folder other than the model's are moved into the new one. A process killed between the
    renames leaves ``.<name>.sthist-replaced-*`` beside ``folder``; :func:`_recover_save` finishes the job.
    """
    if not folder.exists():
        os.replace(staging, folder)
        return
    aside = folder.parent / f".{folder.name}{_REPLACED}{uuid.uuid4().hex}"
    os.replace(folder, aside)
    try:
        os.replace(staging, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    _recover_save(folder)


def _recover_save(folder: Path) -> None:
    """Finish or undo saves into ``folder`` that were cut short (killed between renames)."""
    for staging in folder.parent.glob(f".{folder.name}{_SAVING}*"):
        if not _in_use(staging):
            shutil.rmtree(staging, ignore_errors=True)
    for aside in sorted(folder.parent.glob(f".{folder.name}{_REPLACED}*")):
        if not folder.exists():
            os.replace(aside, folder)  # the new model never arrived: the old one comes back
            logger.warning("restored the model in %s from an interrupted save", folder)
            continue
        for entry in aside.iterdir():
            if entry.name not in (CONFIG_FILE, WEIGHTS_FILE) and not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
        shutil.rmtree(aside, ignore_errors=True)


def _in_use(staging: Path) -> bool:
    """Whether a staging folder may still be written by a running save (touched in the last hour)."""
    import time

    try:
        return time.time() - staging.stat().st_mtime < 3600
    except FileNotFoundError:
        return False


def _take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    taken = {k.removeprefix(prefix): tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
    return taken
