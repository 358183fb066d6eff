"""HEST-1k samples (Jaume et al., NeurIPS 2024): the sample folder layout read into SpatialData sections.

A HEST root holds, per sample id, ``st/<id>.h5ad`` (spots × genes, raw counts, spot centres in pixels of the
slide in ``obsm['spatial']``), ``wsis/<id>.tif`` (a pyramidal TIFF of the H&E slide) and
``metadata/<id>.json`` (``pixel_size_um_estimated``, ``spot_diameter`` and ``inter_spot_dist`` in µm,
``st_technology``, organ, species, …), and where present ``patches/<id>.h5`` (224 px patches at 0.5 µm/px
around the spots), ``tissue_seg/`` and ``cellvit_seg/``. The dataset is hosted on the Hugging Face hub
(``MahmoodLab/hest``, gated: accept its terms and log in with ``huggingface-cli login``);
:func:`download_hest` fetches the files of the given ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import Key
from sthist._logging import logger

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: The Hugging Face dataset that hosts HEST-1k.
HEST_REPOSITORY = "MahmoodLab/hest"
#: Files a sample needs, relative to the root (``{id}`` replaced); the rest is optional.
REQUIRED = ("st/{id}.h5ad", "wsis/{id}.tif", "metadata/{id}.json")
#: Optional per-sample files and folders recorded in ``attrs['sthist']['hest']['files']`` when present.
OPTIONAL = ("patches/{id}.h5", "tissue_seg/{id}_contours.geojson", "tissue_seg/{id}_mask.jpg", "cellvit_seg")
#: Metadata fields copied into ``attrs['sthist']['hest']``.
METADATA_FIELDS = (
    "st_technology", "species", "organ", "disease_state", "oncotree_code", "patient", "tissue",
    "preservation_method", "pixel_size_um_estimated", "pixel_size_um_embedded", "spot_diameter",
    "inter_spot_dist", "dataset_title",
)  # fmt: skip


def _sample_patterns(ids: Sequence[str]) -> list[str]:
    """Hub file patterns of the samples: every file named ``<id>.…`` or ``<id>_…`` in any folder."""
    return [f"*{sample}[_.]**" for sample in ids]


def download_hest(root: str | Path, ids: Sequence[str], *, token: str | None = None) -> Path:
    """Download HEST-1k samples from the Hugging Face hub into ``root`` (the sample folder layout).

    Parameters
    ----------
    root
        Local folder for the dataset (created if needed); files already there are not fetched again.
    ids
        Sample ids (e.g. ``["TENX95", "NCBI783"]``; see ``HEST_v1_1_0.csv`` on the hub).
    token
        A Hugging Face token with access to the gated dataset (default: the one ``huggingface-cli login``
        stored).

    Returns
    -------
    ``root``.

    Examples
    --------
    >>> import sthist
    >>> sthist.datasets.download_hest("data/hest", ["TENX95"])  # doctest: +SKIP
    """
    from sthist._settings import settings

    ids = _ids(ids)
    if settings.offline:
        raise RuntimeError(
            f"sthist.settings.offline is set, so HEST samples {ids} cannot be downloaded; copy the files into "
            f"{root} (st/, wsis/, metadata/) or unset offline."
        )
    from huggingface_hub import snapshot_download

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    logger.info("downloading HEST samples %s into %s", ids, root)
    snapshot_download(
        repo_id=HEST_REPOSITORY, repo_type="dataset", local_dir=root, allow_patterns=_sample_patterns(ids),
        token=token,
    )  # fmt: skip
    return root


def _ids(ids) -> list[str]:
    ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
    if not ids:
        raise ValueError("Give at least one HEST sample id.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"HEST sample ids are repeated: {ids}.")
    return ids


def _missing(root: Path, sample: str) -> list[str]:
    return [name.format(id=sample) for name in REQUIRED if not (root / name.format(id=sample)).is_file()]


def hest(
    root: str | Path,
    ids: str | Sequence[str],
    *,
    download: bool = False,
    token: str | None = None,
) -> dict[str, SpatialData]:
    """HEST-1k samples as SpatialData sections, the slide read lazily from its pyramidal TIFF.

    Each section holds ``images['he']`` (the slide's own pyramid levels, read lazily), ``shapes['spots']``
    (circles of the metadata's ``spot_diameter``) and ``tables['table']`` (the raw counts, ``obs`` of the h5ad,
    ``obsm['spatial']``), its µm/px recorded from ``pixel_size_um_estimated``. ``attrs['sthist']`` names the
    section (the id) and the patient where the metadata gives one; ``attrs['sthist']['hest']`` keeps the
    metadata (technology, organ, species, …) and the optional files found (patches, segmentation).

    Parameters
    ----------
    root
        Folder in HEST's layout (``st/``, ``wsis/``, ``metadata/``, …).
    ids
        One sample id or several.
    download
        Fetch samples whose files are missing from the hub (:func:`download_hest`; needs internet and access
        to the gated dataset). Otherwise a missing file is an error naming it.
    token
        Hugging Face token for the download.

    Returns
    -------
    Dict of sample id → SpatialData, in the order of ``ids``.

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.hest("data/hest", ["TENX95"])  # doctest: +SKIP
    >>> sthist.pp.get_microns_per_pixel(sections["TENX95"])  # doctest: +SKIP
    """
    root = Path(root)
    ids = _ids(ids)
    missing = {sample: _missing(root, sample) for sample in ids}
    missing = {sample: files for sample, files in missing.items() if files}
    if missing and download:
        download_hest(root, list(missing), token=token)
        missing = {sample: _missing(root, sample) for sample in missing}
        missing = {sample: files for sample, files in missing.items() if files}
    if missing:
        listed = "; ".join(f"{sample}: {', '.join(files)}" for sample, files in missing.items())
        raise FileNotFoundError(
            f"HEST files missing under {root} ({listed}). Pass download=True to fetch them from the hub "
            f"({HEST_REPOSITORY}, gated: log in first), or copy them in HEST's layout."
        )
    return {sample: read_hest_sample(root, sample) for sample in ids}


def read_hest_sample(root: str | Path, sample: str) -> SpatialData:
    """One HEST sample from its files under ``root`` (see :func:`hest`)."""
    import anndata as ad

    from sthist.datasets._arrays import from_arrays

    root = Path(root)
    metadata_path = root / "metadata" / f"{sample}.json"
    try:
        metadata = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{metadata_path} is not valid JSON: {error}") from None
    microns_per_pixel = metadata.get("pixel_size_um_estimated") or metadata.get("pixel_size_um_embedded")
    if microns_per_pixel is None:
        raise ValueError(
            f"{metadata_path} gives no pixel size (pixel_size_um_estimated or pixel_size_um_embedded)."
        )
    diameter = metadata.get("spot_diameter")
    if diameter is None:
        raise ValueError(f"{metadata_path} gives no spot_diameter (µm).")
    adata = ad.read_h5ad(root / "st" / f"{sample}.h5ad")
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    else:
        raise ValueError(
            f"{root / 'st' / f'{sample}.h5ad'} has no spot positions (obsm['spatial'] or obs "
            "pxl_col_in_fullres / pxl_row_in_fullres)."
        )
    obs = adata.obs.copy()
    sdata = from_arrays(
        adata.X, xy, root / "wsis" / f"{sample}.tif", microns_per_pixel=float(microns_per_pixel),
        spot_diameter_um=float(diameter), gene_names=list(adata.var_names), spot_names=list(adata.obs_names),
        obs=obs, section=sample,
    )  # fmt: skip
    attrs = sdata.attrs[Key.attrs.ROOT]
    if metadata.get("patient") not in (None, ""):
        attrs[Key.attrs.PATIENT] = str(metadata["patient"])
    files = [name.format(id=sample) for name in OPTIONAL if (root / name.format(id=sample)).exists()]
    attrs["hest"] = {
        "id": sample,
        **{field: metadata[field] for field in METADATA_FIELDS if metadata.get(field) is not None},
        "files": files,
    }
    return sdata
