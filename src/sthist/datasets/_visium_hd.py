"""10x Visium HD (Space Ranger binned outputs) through spatialdata-io: square bins as the units to predict."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._scale import set_microns_per_pixel
from sthist.datasets._vendor import annotating, name_full_resolution_system

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Space Ranger's folder of binned outputs, and the name of one bin size's folder in it.
BINNED_OUTPUTS = "binned_outputs"
_BIN_FOLDER = "square_{:03d}um"
#: Dataset id given to spatialdata-io when the output's files carry no prefix (it would name elements "").
_UNPREFIXED_ID = "visium_hd"


def visium_hd(
    path: str | Path,
    *,
    bin_size: int = 16,
    dataset_id: str | None = None,
    fullres_image_file: str | Path | None = None,
) -> SpatialData:
    """Read one bin size of a Visium HD output with ``spatialdata_io.visium_hd``: bins are the spots.

    Each square bin of ``bin_size`` µm becomes a spot (a square polygon; its centroid is where patches are
    cut), so :func:`sthist.tl.fit` trains on bins and :func:`sthist.tl.predict` predicts at bin centres, with
    patches of the model's ``patch_size_um`` whatever the bin size. The full-resolution coordinate system is
    named ``'global'``; its µm per pixel is ``microns_per_pixel`` of the bin's ``scalefactors_json.json``
    (checked against ``bin_size_um / spot_diameter_fullres``). The section keeps one image: the
    full-resolution H&E (``microscope_image/`` or ``fullres_image_file``), as a pyramid; without one, the
    high-resolution PNG placed by its scale factor, with a warning that its pixels are coarse.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder of a Visium HD run (``feature_slice.h5``, ``binned_outputs/``).
    bin_size
        Bin side in µm; one of the ``binned_outputs/square_<size>um`` folders (2, 8 or 16 from Space Ranger).
        16 µm bins are the practical unit for training on a CPU; 8 µm bins are four times as many.
    dataset_id
        Name prefix of the files (``<id>_feature_slice.h5``); inferred when ``None``.
    fullres_image_file
        The full-resolution H&E, when it is not in ``microscope_image/``.

    Returns
    -------
    A SpatialData section: the image, the bins as shapes and their counts as the table ``'table'`` (with
    ``obsm['spatial']`` in full-resolution pixels, and ``array_row``/``array_col``/``in_tissue`` in ``obs``).

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.visium_hd("outs/", bin_size=16)  # doctest: +SKIP
    >>> sthist.tl.predict(sdata, model)  # doctest: +SKIP
    """
    try:
        from spatialdata_io import visium_hd as read_visium_hd
    except ImportError as error:
        raise ImportError("Reading Visium HD needs spatialdata-io: `pip install 'sthist[io]'`.") from error

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder; give the Space Ranger `outs` folder of a Visium HD run."
        )
    binned = path / BINNED_OUTPUTS
    available = sorted(
        int(m.group(1)) for p in binned.glob("square_*um") if (m := re.fullmatch(r"square_(\d+)um", p.name))
    )
    if not available:
        raise FileNotFoundError(
            f"{binned} has no square_<size>um folders; is {path} the `outs` folder of a Visium HD run?"
        )
    if bin_size not in available:
        raise ValueError(f"No {bin_size} µm bins in {binned}; available bin sizes (µm): {available}.")
    scalefactors_file = binned / _BIN_FOLDER.format(bin_size) / "spatial" / "scalefactors_json.json"
    if not scalefactors_file.exists():
        raise FileNotFoundError(f"{scalefactors_file} is missing: the bins' positions cannot be scaled.")
    scalefactors = json.loads(scalefactors_file.read_text())
    microns_per_pixel = scalefactors.get("microns_per_pixel")
    if microns_per_pixel is None or not microns_per_pixel > 0:
        raise ValueError(
            f"{scalefactors_file} has no positive 'microns_per_pixel'; the physical scale is unknown."
        )
    if dataset_id is None and (path / "feature_slice.h5").exists():
        dataset_id = _UNPREFIXED_ID
    with warnings.catch_warnings():
        # Reported below in sthist's own words when it matters (no full-resolution image).
        warnings.filterwarnings("ignore", message="No full resolution image found", category=UserWarning)
        warnings.filterwarnings("ignore", message="No image path found", category=UserWarning)
        sdata = read_visium_hd(
            path,
            dataset_id=dataset_id,
            bin_size=bin_size,
            bins_as_squares=True,
            load_segmentations_only=False,
            fullres_image_file=fullres_image_file,
        )
    name = _BIN_FOLDER.format(bin_size)
    table = sdata.tables[name]
    (shapes_key,) = [key for key in sdata.shapes if key.endswith(name)]
    full = [key for key in sdata.images if key.endswith("_full_image")]
    hires = [key for key in sdata.images if key.endswith("_hires_image")]
    if full:
        image_key = full[0]
    elif hires:
        image_key = hires[0]
        warnings.warn(
            f"{path} has no full-resolution H&E (microscope_image/): the high-resolution PNG is used, whose pixels "
            f"are {microns_per_pixel / scalefactors['tissue_hires_scalef']:.2g} µm; pass fullres_image_file= for "
            "patches at the model's resolution.",
            UserWarning,
            stacklevel=2,
        )
    else:
        raise FileNotFoundError(
            f"{path} has no H&E image (microscope_image/ or spatial/tissue_hires_image.png); pass fullres_image_file=."
        )
    from spatialdata import SpatialData

    section = SpatialData(
        images={"he": sdata.images[image_key]},
        shapes={"bins": sdata.shapes[shapes_key]},
        tables={"table": annotating(table, "bins", instance_key="location_id")},
    )
    name_full_resolution_system(section, section.shapes["bins"])
    for element in (section.images["he"], section.shapes["bins"]):
        _keep_only(element, DEFAULT_COORDINATE_SYSTEM)
    set_microns_per_pixel(
        section,
        float(microns_per_pixel),
        source=f"microns_per_pixel of {scalefactors_file.relative_to(path)}",
    )
    section.attrs[Key.attrs.ROOT].update(
        {Key.attrs.DATASET: "visium_hd", "path": str(path), "bin_size_um": int(bin_size)}
    )
    return section


def _keep_only(element, system: str) -> None:
    """Drop an element's transformations to every coordinate system but ``system`` (the downscaled PNGs' ones)."""
    from spatialdata.transformations import get_transformation, set_transformation

    kept = get_transformation(element, to_coordinate_system=system)
    set_transformation(element, {system: kept}, set_all=True)
