"""Encoder tokens of every spot patch (and dihedral view), computed once and reused across epochs and processes."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from tqdm import tqdm

from sthist._core._neighbours import neighbour_mean
from sthist._logging import logger
from sthist._settings import retained_memory, settings
from sthist.data._feature_store import FeatureStore
from sthist.data._patches import SpotPatchDataset
from sthist.data._precomputed import PrecomputedFeatures


@torch.inference_mode()
def encode_patches(
    dataset: SpotPatchDataset,
    encoder: torch.nn.Module,
    *,
    views: int = 1,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    indices=None,
    description: str = "encoding patches",
    jitter: float = 0.0,
    grid: int | None = None,
    resample_on_device: bool | None = None,
) -> torch.Tensor:
    """Tokens of each spot's patch under the first ``views`` dihedral transforms: (spots, views, tokens, channels).

    View 0 is the patch as it is; views 1-3 are quarter turns, 4-7 the same flipped; with ``jitter`` views 1
    and up also carry a stain jitter of that strength (:meth:`SpotPatchDataset.view`). With ``grid`` each
    batch's tokens are summarised on the device before they are kept (:func:`summarise_tokens`), so the
    result holds only what the model reads of them. Batches keep one shape
    (the last one is padded) so the allocator reuses its buffers. A reader thread fills the next batch (reading,
    resampling, stain changes: numpy, PIL and zarr release the GIL) while the encoder runs on the current one,
    so reading overlaps the forward pass instead of adding to it.

    With ``resample_on_device`` (by default on a GPU, when there is no stain normalisation or jitter, which
    work on resampled pixels) the reader thread only cuts the crops; they travel to the device (from pinned
    memory on a GPU) with their patch boxes, and are resampled (weights computed there) and turned by batched
    matrix products (:func:`sthist.data._patches.resample`): the filter of the CPU path, the same pixels up to one
    grey level (tested), and the CPU left free to keep a fast device fed.
    """
    if not 1 <= views <= 8:
        raise ValueError(f"views must be between 1 and 8 (dihedral transforms), got {views}.")
    if isinstance(encoder, PrecomputedFeatures):  # features another tool computed: read, not encoded
        return encoder.tokens(dataset, indices=indices, views=views, dtype=dtype)
    device = torch.device(device)
    convertible = not jitter and dataset.stain_reference is None
    if resample_on_device and not convertible:
        raise ValueError(
            "resample_on_device=True cannot apply stain normalisation or jitter (they work on resampled pixels on "
            "the CPU); leave resample_on_device=None to choose by itself."
        )
    if resample_on_device is None:
        resample_on_device = device.type == "cuda" and convertible
    encoder = encoder.to(device).eval()
    items = range(len(dataset)) if indices is None else [int(i) for i in indices]
    n = len(items)
    jobs = [(row, index, view) for row, index in enumerate(items) for view in range(views)]
    starts = list(range(0, len(jobs), batch_size))
    if not starts:
        raise ValueError("No patch to encode (empty dataset or indices).")
    source = (
        _DeviceResampledBatches(dataset, items, batch_size, device)
        if resample_on_device
        else _ResampledBatches(dataset, batch_size, jitter, device)
    )

    def fill(number: int) -> int:
        """Batch ``number`` into one of two buffers (the other is the one the encoder is reading)."""
        source.fill(number % 2, jobs[starts[number] : starts[number] + batch_size])
        return number

    output = None
    with retained_memory(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="sthist-read") as reader:
        pending = reader.submit(fill, 0)
        for number in tqdm(range(len(starts)), desc=description, disable=not settings.progress, unit="batch"):
            chunk = jobs[starts[number] : starts[number] + batch_size]
            # The next batch goes to the other buffer while this one is encoded (copied to the device first).
            on_device = source.batch(pending.result() % 2, chunk)
            if number + 1 < len(starts):
                pending = reader.submit(fill, number + 1)
            tokens = summarise_tokens(encoder(on_device)[: len(chunk)], grid)
            if output is None:
                output = torch.empty((n, views, *tokens.shape[1:]), dtype=dtype)
                logger.info(
                    "token cache: %d spots × %d views × %d tokens × %d channels (%s) = %.0f MiB",
                    n, views, tokens.shape[1], tokens.shape[2], dtype,
                    output.numel() * output.element_size() / 2**20,
                )  # fmt: skip
            rows = np.array([row for row, _, _ in chunk])
            columns = np.array([view for _, _, view in chunk])
            # Copying the tokens back waits for the device, so the buffer is free before it is filled again.
            output[rows, columns] = tokens.to("cpu", dtype)
    return cast(torch.Tensor, output)  # set by the first batch; there is at least one


def _host_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed host tensor, in pinned memory when it is copied to a GPU (so the copy can run asynchronously)."""
    return torch.zeros(shape, dtype=dtype, pin_memory=device.type == "cuda")


class _ResampledBatches:
    """Batches of patches resampled on the CPU (PIL), stain-changed and turned there (two host buffers)."""

    def __init__(self, dataset: SpotPatchDataset, batch_size: int, jitter: float, device: torch.device):
        size = dataset.patch_size_px
        # Filled with numpy in the reader thread: a torch copy there would start a second OpenMP team whose
        # threads compete with (and spin beside) the encoder's, slowing the forward pass by a fifth on 2 cores.
        self.buffers = [_host_buffer((batch_size, 3, size, size), torch.uint8, device) for _ in range(2)]
        self.dataset, self.jitter, self.device = dataset, jitter, device
        # Each patch read and resampled once for all its views.
        self.read = functools.lru_cache(maxsize=1)(dataset.patch)

    def fill(self, buffer: int, chunk: list[tuple[int, int, int]]) -> None:
        batch = self.buffers[buffer].numpy()
        for slot, (_, index, view) in enumerate(chunk):
            batch[slot] = self.dataset.view(index, view, self.jitter, base=self.read(index)).transpose(
                2, 0, 1
            )

    def batch(self, buffer: int, chunk: list[tuple[int, int, int]]) -> torch.Tensor:
        return self.buffers[buffer].to(self.device, non_blocking=True)


class _DeviceResampledBatches:
    """Batches of crops with their patch boxes, resampled (weights computed there) and turned on the device."""

    def __init__(self, dataset: SpotPatchDataset, items, batch_size: int, device: torch.device):
        self.size = dataset.patch_size_px
        height, width = dataset.crop_shape(items)
        self.crops = [_host_buffer((batch_size, 3, height, width), torch.uint8, device) for _ in range(2)]
        self.boxes = [_host_buffer((batch_size, 6), torch.float64, device) for _ in range(2)]
        self.device = device
        self.read = functools.lru_cache(maxsize=1)(dataset.crop)

    def fill(self, buffer: int, chunk: list[tuple[int, int, int]]) -> None:
        crops, boxes = self.crops[buffer].numpy(), self.boxes[buffer].numpy()
        for slot, (_, index, _) in enumerate(chunk):
            crop, box = self.read(index)
            height, width = crop.shape[:2]
            crops[slot, :, :height, :width] = crop.transpose(2, 0, 1)
            boxes[slot] = (*box, height, width)

    def batch(self, buffer: int, chunk: list[tuple[int, int, int]]) -> torch.Tensor:
        from sthist.data._patches import dihedral_tensor, resample

        crops = self.crops[buffer].to(self.device, non_blocking=True)
        boxes = self.boxes[buffer].to(self.device, non_blocking=True)
        # Unused slots of a last, partial batch hold an earlier batch's crop (or zeros): resampled, then dropped.
        patches = resample(crops, boxes, self.size)
        for slot, (_, _, view) in enumerate(chunk):
            if view:
                patches[slot] = dihedral_tensor(patches[slot], view)
        return patches


def summarise_tokens(tokens: torch.Tensor, grid: int | None) -> torch.Tensor:
    """What a model without token layers reads of a patch's tokens (B, N, C): ``grid`` × ``grid`` regional means.

    Such a model sees the tokens only through a linear projection followed by averages: the mean over all
    tokens (the pooled image representation) and, in CMRCNet's reconstruction branch, the means over the
    regions of the token grid (``reconstruction_grid``). Projection and averaging commute, so
    those averages of the raw tokens are all the model needs, and caching them instead of every token cuts the
    memory of the fast path and of prediction:

    - ``grid=None``: the tokens unchanged (token layers read every token);
    - ``grid=1``: the mean token, (B, 1, C): 49× smaller than EfficientNet's 7 × 7 grid;
    - ``grid ≥ 2`` and a square token grid of side larger than ``grid``: the ``grid²`` regional means (adaptive
      average pooling, overlapping where the side does not divide) followed by one *balancing* token chosen so
      that the mean of the ``grid² + 1`` tokens is the mean of all N, (B, grid² + 1, C): 4.9× smaller at
      ``grid=3``. Whatever averages tokens (context, per-section centring, ridge features) reads the summary
      as it read the tokens, and :func:`is_token_summary` tells the reconstruction branch where the regions are;
    - any other sequence (a grid no larger than ``grid``, a sequence that is not square) unchanged.

    Averages are taken in float32 and the result has the dtype of ``tokens``.
    """
    if grid is None:
        return tokens
    batch, n, channels = tokens.shape
    if grid == 1:
        return tokens.float().mean(dim=1, keepdim=True).to(tokens.dtype)
    side = math.isqrt(n)
    if side * side != n or side <= grid:
        return tokens
    values = tokens.float()
    grid_first = values.transpose(1, 2).reshape(batch, channels, side, side)
    regions = torch.nn.functional.adaptive_avg_pool2d(grid_first, grid).flatten(2).transpose(1, 2)
    balance = (grid * grid + 1) * values.mean(dim=1, keepdim=True) - regions.sum(dim=1, keepdim=True)
    return torch.cat([regions, balance], dim=1).to(tokens.dtype)


def is_token_summary(n_tokens: int, grid: int | None) -> bool:
    """Whether ``n_tokens`` tokens are a summary at ``grid`` ≥ 2 (:func:`summarise_tokens`): regions, then balance.

    A summary has ``grid² + 1`` tokens, which is never a square; encoders give square grids.
    """
    return grid is not None and grid >= 2 and n_tokens == grid * grid + 1


class TokenDataset(torch.utils.data.Dataset):
    """Cached tokens paired with expression; a random cached view per item when ``augment``."""

    def __init__(self, tokens: torch.Tensor, expression: torch.Tensor, *, augment: bool = True):
        if len(tokens) != len(expression):
            raise ValueError("tokens and expression must have one row per spot.")
        self.tokens, self.expression, self.augment = tokens, expression, augment

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        views = self.tokens.shape[1]
        view = int(torch.randint(views, (1,)).item()) if self.augment and views > 1 else 0
        return {"tokens": self.tokens[index, view], "expression": self.expression[index]}


class TokenCache:
    """Encoder tokens per section, reused across fits, predictions and processes that share encoder and patches.

    Cross-validation and benchmarks fit many models on overlapping sections with the same frozen encoder;
    with a cache each section is encoded once. Entries are keyed by content, never by a section's name: a
    digest of the image (its dask identity, level shape and placement), the patch boxes and the stain
    normalisation, with the encoder's weights identity and the patch size, so a cached entry is used only
    where it is valid. Each entry keeps the summary of the tokens it was asked for (``grid``,
    :func:`summarise_tokens`); a request for mean tokens (``grid=1``) is served from any entry of the same
    content, and any request from an entry of every token.

    With a folder, summaries (``grid`` ≥ 1) are also kept on disk (:class:`~sthist.data._feature_store.FeatureStore`),
    so that another process, on this machine or another one that sees the folder, reads them instead of
    encoding again (encode once on a GPU node, train and predict on a laptop). On disk an entry is keyed by a
    SHA-256 of the pixels of every patch's crop (what the encoder is shown, wherever the image is stored) with
    the patch geometry, the table rows (stain jitter is seeded by them), the stain settings, the encoder's
    weights identity (for random weights, a digest of the weights themselves), the views' jitter and the grid;
    files are written atomically and checked against their key when read. Every token of models with token
    layers (``grid=None``) stays in memory only.

    Parameters
    ----------
    folder
        Where summaries are kept on disk. ``None`` (default): ``settings.cache_dir / 'tokens'`` when
        ``sthist.settings.cache_dir`` is set, else memory only; ``False``: memory only.

    Attributes
    ----------
    encoded, read
        Sections encoded by this cache, and read from its folder, so far.
    """

    def __init__(self, folder: str | os.PathLike | Literal[False] | None = None):
        if folder is None and settings.cache_dir is not None:
            folder = Path(settings.cache_dir) / "tokens"
        self.store = None if folder is None or folder is False else FeatureStore(folder)
        self._entries: dict[tuple, dict[int | None, torch.Tensor]] = {}
        self.encoded = 0
        self.read = 0

    def __repr__(self) -> str:
        where = "memory" if self.store is None else str(self.store.folder)
        return f"TokenCache({where}, {len(self)} entries in memory)"

    @property
    def folder(self) -> Path | None:
        """The folder summaries are kept in (``None``: memory only)."""
        return None if self.store is None else self.store.folder

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    @property
    def nbytes(self) -> int:
        held = [tokens for entries in self._entries.values() for tokens in entries.values()]
        return sum(tokens.numel() * tokens.element_size() for tokens in held)

    def tokens(
        self,
        dataset: SpotPatchDataset,
        encoder,
        *,
        identity: str,
        views: int,
        device="cpu",
        jitter: float = 0.0,
        grid: int | None = None,
    ) -> torch.Tensor:
        """Tokens of all items of ``dataset`` (items, views, tokens, channels), encoding only missing sections.

        Views 1 and up depend on the stain ``jitter``, so it is part of the key. Precomputed features are read
        from the tables, not cached.
        """
        if isinstance(encoder, PrecomputedFeatures):
            return encoder.tokens(dataset, views=views, identity=identity)
        parts = []
        for position, name in enumerate(dataset.sections):
            start, stop = int(dataset._offsets[position]), int(dataset._offsets[position + 1])
            key: tuple = (
                section_digest(dataset, position),
                identity,
                dataset.patch_size_um,
                dataset.patch_size_px,
            )
            if jitter and views > 1:
                key = (*key, float(jitter))
            entries = self._entries.setdefault(key, {})
            cached = _served(entries, views, grid)
            stored = None
            if cached is None and self.store is not None and grid is not None:
                stored = stored_key(
                    dataset, position, encoder, identity=identity, jitter=jitter if views > 1 else 0.0
                )
                cached = self.store.read(stored, grid=grid, views=views, spots=stop - start)
                if cached is not None:
                    logger.info("token cache: read %s from %s", name, self.store.folder)
                    entries[grid] = cached
                    self.read += 1
            if cached is None:
                cached = encode_patches(
                    dataset, encoder, views=views, device=device, indices=range(start, stop),
                    description=f"encoding {name}", jitter=jitter, grid=grid,
                )  # fmt: skip
                entries[grid] = cached
                self.encoded += 1
                if stored is not None and self.store is not None:
                    self.store.write(stored, cached, grid=cast(int, grid), section=str(name))
            parts.append(cached[:, :views])
        return torch.cat(parts)


def _served(entries: dict[int | None, torch.Tensor], views: int, grid: int | None) -> torch.Tensor | None:
    """The tokens at ``grid`` with at least ``views`` views from a section's cached entries, or ``None``."""
    cached = entries.get(grid)
    if cached is not None and cached.shape[1] >= views:
        return cached
    for held, tokens in entries.items():
        if tokens.shape[1] >= views and (held is None or grid == 1):
            spots, count, n, channels = tokens.shape
            summary = summarise_tokens(tokens.reshape(spots * count, n, channels), grid)
            return summary.reshape(spots, count, *summary.shape[1:])
    return None


#: Patches whose pixels enter a section's content digest.
DIGEST_PATCHES = 16


def section_digest(dataset: SpotPatchDataset, position: int) -> str:
    """Digest of what one section of ``dataset`` shows the encoder: image identity, geometry, patch boxes.

    The image's identity is the name dask gives its pixel array, which is a hash of the pixels for arrays
    made in memory and of the store and array path for arrays read from zarr; pixels of sample patches are
    hashed instead when the image is not a dask array. Stain normalisation enters by its statistics.
    """
    import hashlib

    section = dataset._sections[position]
    digest = hashlib.sha256()
    level = section.geometry.level
    digest.update(repr((level.index, level.shape, str(level.data.dtype))).encode())
    digest.update(np.ascontiguousarray(level.to_pixels, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(section.boxes, dtype=np.float64).tobytes())
    digest.update(repr((section.stain, dataset.stain_reference)).encode())
    name = getattr(level.data.data, "name", None)
    if name is not None:
        digest.update(str(name).encode())
    else:
        start = int(dataset._offsets[position])
        count = len(section.rows)
        for spot in np.unique(np.linspace(0, count - 1, min(count, DIGEST_PATCHES)).astype(int)):
            digest.update(dataset.patch(start + int(spot)).tobytes())
    return digest.hexdigest()


def content_digest(dataset: SpotPatchDataset, position: int, indices: Sequence[int] | None = None) -> str:
    """SHA-256 of what one section of ``dataset`` shows the encoder, wherever and however its image is stored.

    The pixels of every spot's crop (:meth:`SpotPatchDataset.crop`) with the patch's box in it, the patch size
    in pixels, the table rows (the stain jitter of views 1 and up is seeded by them) and the stain normalisation
    (the section's statistics and the reference). Reading the crops costs what reading them for encoding costs,
    and they are read each time: an image rewritten in place is never mistaken for the one it replaced.
    ``indices`` (items of ``dataset`` inside this section) digests those patches only, e.g. one chunk of tiles.
    """
    section = dataset._sections[position]
    digest = hashlib.sha256()
    digest.update(repr((dataset.patch_size_px, section.stain, dataset.stain_reference)).encode())
    start = int(dataset._offsets[position])
    items = range(start, start + len(section.rows)) if indices is None else [int(i) for i in indices]
    rows = np.asarray(section.rows)[np.asarray(items, dtype=np.int64) - start]
    digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    for item in items:
        crop, box = dataset.crop(item)
        digest.update(np.asarray(crop.shape, dtype=np.int64).tobytes())
        digest.update(np.asarray(box, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(crop).tobytes())
    return digest.hexdigest()


def _materialised(dataset: SpotPatchDataset, position: int) -> bool:
    """Whether a section's level is held in memory (read lazily by chunks, it never is as a whole)."""
    from sthist.data._readers import InMemoryLevel

    reader = dataset._sections[position].reader
    return isinstance(reader, InMemoryLevel) and reader._pixels is not None


def _release(dataset: SpotPatchDataset, position: int) -> None:
    """Let go of a level materialised only to digest it (its tokens came from disk: no patch will be cut)."""
    from sthist.data._readers import InMemoryLevel

    reader = dataset._sections[position].reader
    if isinstance(reader, InMemoryLevel):
        reader._pixels = None


#: Weights identities that do not pin the weights across processes and versions (they name a seed).
_SEEDED = "random initialisation"


def encoder_digest(encoder: torch.nn.Module) -> str:
    """SHA-256 of an encoder's parameters and buffers (for random weights, whose seed does not pin them)."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stored_key(
    dataset: SpotPatchDataset,
    position: int,
    encoder,
    *,
    identity: str,
    jitter: float,
    indices: Sequence[int] | None = None,
) -> dict:
    """What determines a section's tokens on disk (:class:`~sthist.data._feature_store.FeatureStore`'s key).

    ``indices``: the tokens of those items of the section only (:func:`content_digest`).
    """
    weights = identity
    if _SEEDED in identity:  # the same seed builds other weights under another torch or timm
        weights = f"{identity}|sha256:{encoder_digest(encoder)}"
    return {
        "content": content_digest(dataset, position, indices),
        "encoder": weights,
        "patch_size_um": float(dataset.patch_size_um),
        "patch_size_px": int(dataset.patch_size_px),
        "jitter": float(jitter),
        "dtype": "float16",
    }


def chunk_tokens(
    dataset: SpotPatchDataset,
    encoder: torch.nn.Module,
    indices: Sequence[int],
    *,
    identity: str,
    views: int = 1,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    token_cache: TokenCache | None = None,
    grid: int | None = None,
) -> torch.Tensor:
    """Tokens of the items ``indices`` of ``dataset`` (one section's chunk), from ``token_cache``'s folder when kept.

    What :func:`sthist.tl.predict_tiles` encodes a chunk of tiles at a time: with a cache that keeps summaries
    on disk (``grid`` ≥ 1, :class:`TokenCache` with a folder), each chunk is keyed by the pixels of its tiles'
    crops (:func:`content_digest`) with the encoder, patch geometry and grid, read when another process
    encoded it and written when encoded here. Without a folder the chunk is encoded (chunks are never held in
    memory: bounding memory is what they are for).
    """
    if token_cache is not None and not isinstance(token_cache, TokenCache):
        raise TypeError(f"token_cache must be a sthist.data.TokenCache, got {type(token_cache)}.")
    store = None if token_cache is None or grid is None else token_cache.store
    if token_cache is None or store is None or grid is None or isinstance(encoder, PrecomputedFeatures):
        return encode_patches(
            dataset, encoder, views=views, batch_size=batch_size, device=device, indices=indices, grid=grid
        )
    first, last = int(indices[0]), int(indices[-1])
    position = int(np.searchsorted(dataset._offsets, first, side="right")) - 1
    if last >= int(dataset._offsets[position + 1]):
        raise ValueError("chunk_tokens reads one section's items at a time.")
    parts = stored_key(dataset, position, encoder, identity=identity, jitter=0.0, indices=indices)
    cached = store.read(parts, grid=grid, views=views, spots=len(indices))
    if cached is not None:
        token_cache.read += 1
        return cached[:, :views]
    tokens = encode_patches(
        dataset, encoder, views=views, batch_size=batch_size, device=device, indices=indices, grid=grid
    )
    token_cache.encoded += 1
    name = dataset.sections[position]
    store.write(parts, tokens, grid=grid, section=f"{name} items {first}-{last}")
    return tokens


def tokens_of(
    dataset: SpotPatchDataset,
    encoder: torch.nn.Module,
    *,
    identity: str,
    views: int = 1,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    token_cache: TokenCache | None = None,
    jitter: float = 0.0,
    grid: int | None = None,
) -> torch.Tensor:
    """Tokens of every item of ``dataset`` (items, views, tokens, channels), from ``token_cache`` when given.

    ``identity`` names the encoder's weights (backbone and weights identity); a cache reuses tokens only for
    the same identity, patch geometry, spots, views and stain ``jitter`` (of views 1 and up). ``grid``
    summarises the tokens as the model reads them (:func:`summarise_tokens`). Precomputed features
    (:class:`PrecomputedFeatures`) are read from the tables, checked against ``identity``, never cached.
    """
    if isinstance(encoder, PrecomputedFeatures):
        return encoder.tokens(dataset, views=views, identity=identity)
    if token_cache is None:
        return encode_patches(
            dataset, encoder, views=views, batch_size=batch_size, device=device, jitter=jitter, grid=grid
        )
    if not isinstance(token_cache, TokenCache):
        raise TypeError(f"token_cache must be a sthist.data.TokenCache, got {type(token_cache)}.")
    return token_cache.tokens(
        dataset, encoder, identity=identity, views=views, device=device, jitter=jitter, grid=grid
    )


def add_context(
    tokens: torch.Tensor, centres_um: np.ndarray, radius_um: float, groups: np.ndarray | None = None
) -> torch.Tensor:
    """Append a context token to each spot's tokens: the mean token of the spots within ``radius_um``.

    ``tokens`` are (spots, views, tokens, channels); the result has one more token, last: for each view, the
    mean over the spots whose centres (``centres_um``, spots × 2, in µm) lie within ``radius_um`` of the spot,
    itself included, of their mean token. ``groups`` (e.g. the section of each spot) keeps neighbourhoods
    inside a section. Models set up with ``context_um`` read the last token as the tissue around the spot.
    """
    if tokens.ndim != 4:
        raise ValueError(f"tokens must be (spots, views, tokens, channels), got shape {tuple(tokens.shape)}.")
    spots, views, _, channels = tokens.shape
    pooled = (
        torch.cat([chunk.float().mean(dim=2) for chunk in tokens.split(1024)])
        if spots
        else tokens.float().mean(dim=2)
    )
    context = neighbour_mean(pooled.reshape(spots, views * channels).numpy(), centres_um, radius_um, groups)
    context_token = torch.from_numpy(context).view(spots, views, 1, channels).to(tokens.dtype)
    return torch.cat([tokens, context_token], dim=2)
