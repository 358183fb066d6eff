"""Encoder weights from where users keep them: the Hugging Face cache (no network call offline) or a local file.

A local file may be a ``.safetensors``, ``.bin``, ``.pth`` or ``.pt`` state dict, wrapped in a ``state_dict`` /
``model`` entry or not, its keys prefixed by ``module.`` / ``model.`` / ``backbone.`` or not; weights published
for ``transformers``' DINOv2 (Phikon-v2) are mapped onto timm's ViT. Whatever does not fit the model is
reported in one line (missing keys, unexpected keys, tensors of another shape) before anything is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from sthist._logging import logger
from sthist._settings import settings

#: Files a Hugging Face model repository keeps its weights in, in the order timm prefers them.
HUB_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
#: Prefixes a saved state dict may put before a model's own keys (training wrappers, DDP, torch.compile).
KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "dinov2.")
#: Entries of a checkpoint that hold the state dict itself.
CONTAINER_KEYS = ("state_dict", "model", "module")
#: Weights a feature extractor does not use: classifier heads, DINOv2's masked-token embedding.
UNUSED_KEYS = re.compile(r"^(head|head_dist|classifier|fc)\.|^(embeddings\.)?mask_token$")


class MissingWeightsError(ValueError, FileNotFoundError):
    """Pretrained weights that are neither in the Hugging Face cache nor allowed to be downloaded."""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment when called (as ``huggingface_hub`` does).

    ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``. Read at each call rather than at
    import, so that setting ``HF_HOME`` in a running process takes effect.
    """
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def split_hub_id(hub_id: str) -> tuple[str, str | None]:
    """``org/name`` and the revision of ``org/name@revision`` (timm's notation; ``None``: the main branch)."""
    repo, _, revision = hub_id.partition("@")
    return repo, revision or None


def cached_hub_file(hub_id: str, filenames: Iterable[str] = HUB_WEIGHT_FILES) -> Path | None:
    """The first of ``filenames`` that the Hugging Face cache holds for ``hub_id``; ``None`` if none.

    Reads the cache's layout only (``models--org--name/refs/<revision>`` → ``snapshots/<commit>/<file>``,
    through ``huggingface_hub.try_to_load_from_cache``): no network call, whatever ``HF_HUB_OFFLINE`` says.
    """
    from huggingface_hub import try_to_load_from_cache

    repo, revision = split_hub_id(hub_id)
    cache = hub_cache_dir()
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def download_command(hub_id: str) -> str:
    repo, revision = split_hub_id(hub_id)
    option = f" --revision {revision}" if revision else ""
    return (
        f"`hf download {repo}{option}` (`huggingface-cli download {repo}{option}` with huggingface_hub < 1.0)"
    )


def missing_weights_message(label: str, hub_id: str, *, gated: bool, what: str = "weights") -> str:
    """One line: what is missing, where it was looked for, whether it is gated, how to download it once."""
    access = (
        "gated: accept its terms on its Hugging Face page and log in with `hf auth login` before downloading"
        if gated
        else "not gated"
    )
    verb = "are" if what.endswith("s") else "is"
    return (
        f"The {what} of {label} (Hugging Face hub id {hub_id}, {access}) {verb} not in the Hugging Face cache "
        f"{hub_cache_dir()}, and sthist.settings.offline is True (no network calls): on a machine with internet "
        f"run {download_command(hub_id)}, then copy that cache here or point HF_HOME at it; or pass "
        "pretrained=<local weights file>."
    )


def hub_file(
    hub_id: str,
    *,
    label: str,
    gated: bool,
    filenames: Iterable[str] = HUB_WEIGHT_FILES,
    what: str = "weights",
) -> Path:
    """A file of ``hub_id`` from the Hugging Face cache, downloaded into it when ``settings.offline`` is off.

    Offline (the default), only the cache is read and a missing file raises :class:`MissingWeightsError` with
    the command that downloads it.
    """
    filenames = tuple(filenames)
    found = cached_hub_file(hub_id, filenames)
    if found is not None:
        return found
    if settings.offline:
        raise MissingWeightsError(missing_weights_message(label, hub_id, gated=gated, what=what))
    return _download(hub_id, filenames, label=label, gated=gated)


def _download(hub_id: str, filenames: tuple[str, ...], *, label: str, gated: bool) -> Path:
    """The first of ``filenames`` that the hub has for ``hub_id``, downloaded into the Hugging Face cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError

    repo, revision = split_hub_id(hub_id)
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=hub_cache_dir()))
        except EntryNotFoundError:
            continue
        except GatedRepoError as error:
            raise PermissionError(
                f"{label} ({hub_id}) is gated: accept its terms on its Hugging Face page, log in with "
                f"`hf auth login`, and run {download_command(hub_id)} ({type(error).__name__})."
            ) from None
    raise FileNotFoundError(
        f"{hub_id} holds none of {list(filenames)}; pass pretrained=<local weights file>."
    )


@functools.lru_cache(maxsize=16)
def _sha256(path: str, modified_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, computed once per process and version of the file (a ViT-g's is 4.5 GB)."""
    resolved = Path(path).resolve()
    status = resolved.stat()
    return _sha256(str(resolved), status.st_mtime_ns, status.st_size)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (``.safetensors``, or a torch pickle read with ``weights_only=True``).

    A checkpoint that wraps its state dict in a ``state_dict`` / ``model`` / ``module`` entry is unwrapped;
    entries that are not tensors (optimiser state, epoch counters) are left out.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files written before torch's zip format cannot be memory-mapped
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in CONTAINER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors.")
    return {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """``state`` without a prefix that all its keys share and none of the model's keys has (repeatedly)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def is_transformers_dinov2(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is laid out as ``transformers``' ``Dinov2Model`` (Phikon-v2's published weights)."""
    return "embeddings.patch_embeddings.projection.weight" in state


def dinov2_transformers_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ``transformers`` ``Dinov2Model`` state dict onto timm's ``VisionTransformer`` (class token, layer scale).

    Both compute the same function: pre-norm blocks with layer scale, the position embedding added to the class
    token and the patch tokens alike (timm's ``no_embed_class=False``), a final LayerNorm. Query, key and value
    projections are stacked into timm's single ``qkv`` projection; a SwiGLU feed-forward (``weights_in`` /
    ``weights_out``, gate in the first half) becomes timm's ``SwiGLUPacked`` ``fc1`` / ``fc2``. The masked-token
    embedding (used only in pre-training) is dropped; register tokens are not mapped (their position differs).
    """
    renames = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    block_renames = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.fc1",
        "mlp.weights_out": "mlp.fc2",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    pattern = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
    for key, tensor in state.items():
        if key in renames:
            out[renames[key]] = tensor
            continue
        match = pattern.match(key)
        if match is None:
            out[key] = tensor  # left as it is: reported as unexpected unless unused
            continue
        block, rest = match.groups()
        attention = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if attention is not None:
            qkv.setdefault((block, attention.group(2)), {})[attention.group(1)] = tensor
            continue
        for source, target in block_renames.items():
            if rest.startswith(source + ".") or rest == source:
                out[f"blocks.{block}.{target}{rest[len(source) :]}"] = tensor
                break
        else:
            out[key] = tensor
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(
                f"encoder.layer.{block}.attention lacks {sorted({'query', 'key', 'value'} - set(parts))}."
            )
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _listed(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | Path, *, label: str) -> None:
    """Load the weights file ``path`` into ``model``, refusing in one line whatever does not fit.

    Keys are matched after unwrapping and prefix stripping (:func:`read_state_dict`, :func:`strip_prefixes`),
    and after mapping ``transformers`` DINOv2 weights onto timm (:func:`dinov2_transformers_to_timm`); heads and
    pre-training-only tensors the model lacks are ignored. Every other difference is an error that names the
    missing keys, the unexpected keys and the tensors of another shape, with the first few of each.
    """
    target = model.state_dict()
    model_keys = set(target)
    state = strip_prefixes(read_state_dict(path), model_keys)
    if is_transformers_dinov2(state):
        state = dinov2_transformers_to_timm(state)
        logger.info("%s: weights laid out for transformers' DINOv2, mapped onto timm's ViT", path)
    ignored = sorted(k for k in state if k not in model_keys and UNUSED_KEYS.search(k))
    if ignored:
        logger.info(
            "%s: ignored %d tensors the encoder does not use (%s)", path, len(ignored), _listed(ignored)
        )
    state = {k: v for k, v in state.items() if k not in ignored}
    missing = sorted(model_keys - set(state))
    unexpected = sorted(set(state) - model_keys)
    reshaped = sorted(k for k in model_keys & set(state) if tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_listed(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
        if reshaped:
            shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(target[k].shape)}" for k in reshaped]
            problems.append(f"{len(reshaped)} of another shape ({_listed(shapes, 2)})")
        raise ValueError(
            f"{path} does not fit {label}: {'; '.join(problems)}. Check the file, or the architecture's keyword "
            "arguments (e.g. init_values, reg_tokens, mlp_layer, img_size)."
        )
    model.load_state_dict(state, strict=True)
