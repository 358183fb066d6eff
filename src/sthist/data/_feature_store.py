"""Encoded tokens kept on disk between processes and machines, keyed by the content they were computed from.

One safetensors file per section, encoder and setting: its name is the SHA-256 of what determines the
tokens (a digest of the pixels the encoder is shown, the patch geometry, the encoder's weights identity, the
stain settings and the summary grid), and its metadata repeats that key, checked when the file is read. Files
are written to a temporary name in the same folder and renamed into place (``os.replace``), so a reader sees a
whole file or none, and two processes writing the same entry both write valid ones. A damaged or foreign
file is never served: it is reported and recomputed. Only summaries are kept (``grid`` ≥ 1, see
:func:`sthist.data.summarise_tokens`): a ViT-g's 256 × 1536 tokens per patch stay on the device.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from sthist._logging import logger

#: Version of the file layout and of the key; entries of other versions are never read.
STORE_FORMAT = 1
TENSOR = "tokens"


def entry_name(parts: dict) -> str:
    """The file stem of an entry: SHA-256 of its key in canonical JSON (with the store's format)."""
    text = json.dumps({"format": STORE_FORMAT, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class FeatureStore:
    """A folder of encoded token summaries (``<digest>.grid<g>.safetensors``).

    Parameters
    ----------
    folder
        Where the files are kept; made when the first entry is written. Files may be deleted at any time
        (they are encoded again when next needed).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r})"

    def path(self, name: str, grid: int) -> Path:
        return self.folder / f"{name}.grid{int(grid)}.safetensors"

    def read(self, parts: dict, *, grid: int, views: int, spots: int) -> torch.Tensor | None:
        """Tokens (spots, views, tokens, channels) at ``grid`` for the entry ``parts``, or ``None``.

        A request for mean tokens (``grid=1``) is also served from an entry of any other grid (the mean of a
        summary is the mean of all tokens). Entries with fewer than ``views`` views, another number of spots,
        another key in their metadata, or that cannot be read are not served.
        """
        from sthist.data._features import summarise_tokens

        name = entry_name(parts)
        candidates = [self.path(name, grid)]
        if grid == 1 and self.folder.is_dir():
            candidates += sorted(
                p for p in self.folder.glob(f"{name}.grid*.safetensors") if p != candidates[0]
            )
        for path in candidates:
            held = self._load(path, parts, spots)
            if held is None or held[0].shape[1] < views:
                continue
            tokens, held_grid = held
            if held_grid != grid:
                count, n_views, n, channels = tokens.shape
                summary = summarise_tokens(tokens.reshape(count * n_views, n, channels), grid)
                tokens = summary.reshape(count, n_views, *summary.shape[1:])
            return tokens
        return None

    def _load(self, path: Path, parts: dict, spots: int) -> tuple[torch.Tensor, int] | None:
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
                tokens = handle.get_tensor(TENSOR)
            key = json.loads(metadata["key"])
            grid = int(metadata["grid"])
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            logger.warning("token cache: ignoring unreadable %s (%s); it is encoded again", path, error)
            return None
        if key != parts or tokens.ndim != 4 or tokens.shape[0] != spots:
            logger.warning("token cache: %s does not hold the entry its name says; it is encoded again", path)
            return None
        return tokens, grid

    def write(self, parts: dict, tokens: torch.Tensor, *, grid: int, section: str = "") -> Path | None:
        """Write an entry atomically (temporary file in the folder, then ``os.replace``); ``None`` if it failed.

        A cache that cannot be written (read-only, full) is reported and skipped: the tokens are still used.
        """
        from safetensors.torch import save_file

        from sthist import __version__

        path = self.path(entry_name(parts), grid)
        temporary = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".writing-", suffix=".safetensors")
            os.close(handle)
            metadata = {
                "key": json.dumps(parts, sort_keys=True),
                "grid": str(int(grid)),
                "section": str(section),
                "sthist": __version__,
            }
            save_file({TENSOR: tokens.contiguous()}, temporary, metadata=metadata)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(
                temporary, 0o666 & ~mask
            )  # shared caches: readable as the umask allows, like other files
            os.replace(temporary, path)
            temporary = None
        except OSError as error:
            logger.warning(
                "token cache: could not write %s (%s); the tokens are used without being kept", path, error
            )
            return None
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
        logger.info(
            "token cache: kept %s (%s, %.1f MiB)",
            path.name,
            section,
            tokens.numel() * tokens.element_size() / 2**20,
        )
        return path
