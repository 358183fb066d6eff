"""10x Visium (Space Ranger output) through spatialdata-io, with the physical scale recorded."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._scale import set_microns_per_pixel
from sthist._core._section import VISIUM_SPOT_DIAMETER_UM
from sthist.datasets._registry import dataset_dir, fetch, registry

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Diameter of a Visium spot in µm (10x Genomics specification).


def visium(path: str | Path, *, dataset_id: str | None = None) -> SpatialData:
    """Read a Space Ranger output folder with ``spatialdata_io.visium`` and record its physical scale.

    The full-resolution coordinate system is named ``'global'`` (spatialdata-io names it after the dataset);
    its µm per pixel follows from the 65 µm spot diameter and ``spot_diameter_fullres`` of
    ``spatial/scalefactors_json.json``. Images (``*_hires_image``, ``*_lowres_image``) are placed in it by
    the scale factors of the same file.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (``filtered_feature_bc_matrix.h5``, ``spatial/``).
    dataset_id
        Name prefix of the elements; inferred by spatialdata-io when ``None``.
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
    sdata = read_visium(path, dataset_id=dataset_id)
    shapes_key = next(iter(sdata.shapes))
    from spatialdata.transformations import get_transformation

    systems = get_transformation(sdata.shapes[shapes_key], get_all=True)
    fullres = [name for name, t in systems.items() if type(t).__name__ == "Identity"]
    if len(fullres) != 1:
        raise ValueError(f"Cannot tell the full-resolution coordinate system among {sorted(systems)}.")
    if fullres[0] != DEFAULT_COORDINATE_SYSTEM:
        sdata.rename_coordinate_systems({fullres[0]: DEFAULT_COORDINATE_SYSTEM})
    set_microns_per_pixel(
        sdata,
        VISIUM_SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"]),
        source=f"65 µm spot diameter / spot_diameter_fullres ({scalefactors['spot_diameter_fullres']:.3f} px)",
    )
    sdata.attrs[Key.attrs.ROOT].update({Key.attrs.DATASET: "visium", "path": str(path)})
    return sdata


def seurat_visium(*, folder: str | Path | None = None) -> SpatialData:
    """The tiny real Visium output shipped with the Debian package ``r-cran-seurat`` (mouse brain, 100 genes).

    For testing Visium reading: files are read from ``settings.data_dir / 'seurat-visium'``, verified against
    their checksums, un-gzipped into ``folder`` (a temporary folder by default) and read with :func:`visium`.
    Licence GPL-3 (Seurat authors). Not a training set: 100 genes, a 600 px low-resolution image.
    """
    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="sthist-visium-"))
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
    sdata = visium(target, dataset_id="seurat")
    sdata.attrs[Key.attrs.ROOT]["source"] = str(dataset_dir("seurat-visium"))
    return sdata
