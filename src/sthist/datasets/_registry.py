"""Hashed file registries (pooch): download where there is internet, read a local cache elsewhere."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from sthist._settings import settings

#: Pinned sources: a dataset's files are fetched as ``base_url + relative path`` and checked against sha256.
SOURCES = {
    "her2st": "https://github.com/almaan/her2st/raw/85df7411b987a7dec3feff9718b869a7a82091ec/",
}


@cache
def registry(dataset: str) -> dict[str, str]:
    """Relative path → ``sha256:<hex>`` for a dataset, from the checksum list shipped with sthist."""
    text = files("sthist.datasets").joinpath("registry", f"{dataset}.sha256").read_text()
    entries = {}
    for line in text.splitlines():
        if line.strip():
            digest, path = line.split(maxsplit=1)
            entries[path.strip()] = f"sha256:{digest}"
    return entries


def dataset_dir(dataset: str) -> Path:
    """Local folder of a dataset: ``settings.data_dir / dataset``."""
    return Path(settings.data_dir) / dataset


def fetch(dataset: str, relative_path: str) -> Path:
    """Path of one file of a dataset, verified against its checksum; downloaded when missing.

    The cache folder is ``settings.data_dir / dataset`` (``STHIST_DATA_DIR``). A file already there with the
    right checksum is used as it is; a read-only cache folder works as long as every file is present.
    """
    import pooch

    entries = registry(dataset)
    if relative_path not in entries:
        raise KeyError(f"{relative_path!r} is not a file of dataset {dataset!r}.")
    local = dataset_dir(dataset) / relative_path
    if dataset not in SOURCES:
        if not local.exists():
            raise FileNotFoundError(
                f"{local} is missing. Dataset {dataset!r} cannot be downloaded by sthist; place its files under "
                f"{dataset_dir(dataset)} (settings.data_dir or STHIST_DATA_DIR)."
            )
        if not pooch.file_hash(str(local)) == entries[relative_path].removeprefix("sha256:"):
            raise ValueError(
                f"{local} does not match its recorded sha256 checksum; the file is corrupt or different."
            )
        return local
    if not local.exists() and not _writable(dataset_dir(dataset)):
        raise PermissionError(
            f"{local} is missing, and {dataset_dir(dataset)} cannot be written (a read-only data folder), so it "
            f"cannot be downloaded there. Place the dataset's files under it, or set STHIST_DATA_DIR (or "
            "sthist.settings.data_dir) to a writable folder."
        )
    fetcher = pooch.create(
        path=dataset_dir(dataset), base_url=SOURCES[dataset], registry=entries, retry_if_failed=1
    )
    try:
        return Path(fetcher.fetch(relative_path, progressbar=False))
    except Exception as error:  # network errors come in many types (requests, OSError, ...)
        raise OSError(
            f"Could not obtain {relative_path!r} of dataset {dataset!r}: it is not in {dataset_dir(dataset)} with "
            f"the expected checksum and downloading it from {SOURCES[dataset]} failed ({error}). Set "
            "STHIST_DATA_DIR (or sthist.settings.data_dir) to a folder holding the dataset, or connect to the internet."
        ) from error


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or in its nearest existing parent, where it would be made)."""
    import os

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK | os.X_OK)
