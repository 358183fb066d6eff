"""10x Visium (Space Ranger output) through spatialdata-io, with the physical scale recorded."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._scale import set_microns_per_pixel
from sthist._core._section import VISIUM_SPOT_DIAMETER_UM
from sthist.datasets._registry import dataset_dir, fetch, registry
from sthist.datasets._vendor import name_full_resolution_system

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Diameter of a Visium spot in µm (10x Genomics specification).


def visium(
    path: str | Path, *, dataset_id: str | None = None, fullres_image_file: str | Path | None = None
) -> SpatialData:
    """Read a Space Ranger output folder with ``spatialdata_io.visium`` and record its physical scale.

    The full-resolution coordinate system is named ``'global'`` (spatialdata-io names it after the dataset);
    its µm per pixel follows from the 65 µm spot diameter and ``spot_diameter_fullres`` of
    ``spatial/scalefactors_json.json``. Images (``*_hires_image``, ``*_lowres_image``, and the
    full-resolution H&E when given) are placed in it by the scale factors of the same file. The finest of
    them is recorded as the image sthist reads (``attrs['sthist']['image_key']``), so no function needs
    ``image_key=``; naming another image still chooses it.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (``filtered_feature_bc_matrix.h5``, ``spatial/``).
    dataset_id
        Name prefix of the elements; by default the files' prefix (``<id>_filtered_feature_bc_matrix.h5``), or
        ``'visium'`` for Space Ranger's unprefixed names.
    fullres_image_file
        The full-resolution H&E given to Space Ranger (TIFF or JPEG): patches are then cut at full resolution
        instead of from the high-resolution PNG (about 2,000 px across the capture area).
    """
    try:
        from spatialdata_io import visium as read_visium
    except ImportError as error:
        raise ImportError("Reading Visium needs spatialdata-io: `pip install 'sthist[io]'`.") from error

    path = Path(path)
    scalefactors_file = path / "spatial" / "scalefactors_json.json"
    if not scalefactors_file.exists():
        raise FileNotFoundError(f"{scalefactors_file} is missing; is {path} a Space Ranger output folder?")
    scalefactors = json.loads(scalefactors_file.read_text())
    if "spot_diameter_fullres" not in scalefactors:
        raise ValueError(
            f"{scalefactors_file} has no 'spot_diameter_fullres'; the physical scale is unknown."
        )
    if fullres_image_file is not None and not Path(fullres_image_file).is_file():
        raise FileNotFoundError(f"fullres_image_file={str(fullres_image_file)!r} is not a file.")
    if dataset_id is None and (path / "filtered_feature_bc_matrix.h5").exists():
        dataset_id = "visium"  # Space Ranger's own file names carry no prefix to name the elements after
    with warnings.catch_warnings():
        # Notices about what is mended right below (duplicate gene symbols) or harmless (region column dtype).
        warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
        warnings.filterwarnings("ignore", message="Converting `region_key", category=UserWarning)
        sdata = read_visium(path, dataset_id=dataset_id, fullres_image_file=fullres_image_file)
    for table in sdata.tables.values():
        if not table.var_names.is_unique:
            table.var_names_make_unique()  # Space Ranger lists some gene symbols twice (scanpy's convention)
    name_full_resolution_system(sdata, next(iter(sdata.shapes.values())))
    set_microns_per_pixel(
        sdata,
        VISIUM_SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"]),
        source=f"65 µm spot diameter / spot_diameter_fullres ({scalefactors['spot_diameter_fullres']:.3f} px)",
    )
    sdata.attrs[Key.attrs.ROOT].update(
        {Key.attrs.DATASET: "visium", "path": str(path), Key.attrs.IMAGE: _finest_image(sdata)}
    )
    return sdata


def _finest_image(sdata) -> str | None:
    """The image with the most pixels per unit of the full-resolution coordinate system (``None`` if none)."""
    from spatialdata.transformations import get_transformation

    from sthist._core._image import full_resolution

    area = {}  # area of a pixel in coordinate-system units², per image placed in the system
    for key, image in sdata.images.items():
        systems = get_transformation(full_resolution(image), get_all=True)
        if DEFAULT_COORDINATE_SYSTEM in systems:
            matrix = systems[DEFAULT_COORDINATE_SYSTEM].to_affine_matrix(
                input_axes=("x", "y"), output_axes=("x", "y")
            )
            area[key] = float(abs(np.linalg.det(matrix[:2, :2])))
    return min(area, key=area.__getitem__) if area else None


def seurat_visium(*, folder: str | Path | None = None) -> SpatialData:
    """The tiny real Visium output shipped with the Debian package ``r-cran-seurat`` (mouse brain, 100 genes).

    For testing Visium reading: files are read from ``settings.data_dir / 'seurat-visium'``, verified against
    their checksums, un-gzipped into ``folder`` (a temporary folder by default) and read with :func:`visium`.
    Licence GPL-3 (Seurat authors). Not a training set: 100 genes, a 600 px low-resolution image.
    """
    if folder is None:
        # A temporary folder, removed once the section is read (its elements are held in memory).
        with tempfile.TemporaryDirectory(prefix="sthist-visium-") as temporary:
            sdata = _read_seurat_visium(Path(temporary))
            for name, image in sdata.images.items():
                sdata.images[name] = image.persist()  # read now: dask arrays held in memory
    else:
        sdata = _read_seurat_visium(Path(folder))
    sdata.attrs[Key.attrs.ROOT]["source"] = str(dataset_dir("seurat-visium"))
    return sdata


def _read_seurat_visium(target: Path) -> SpatialData:
    """Un-gzip the Seurat Visium files into ``target`` and read them."""
    (target / "spatial").mkdir(parents=True, exist_ok=True)
    for relative in registry("seurat-visium"):
        if relative.startswith("COPYRIGHT"):
            continue
        source = fetch("seurat-visium", relative)
        destination = target / relative.removesuffix(".gz")
        if relative.endswith(".gz"):
            with gzip.open(source, "rb") as compressed, open(destination, "wb") as plain:
                shutil.copyfileobj(compressed, plain)
        else:
            shutil.copyfile(source, destination)
    return visium(target, dataset_id="seurat")
