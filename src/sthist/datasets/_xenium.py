"""10x Xenium (cells) with its post-run H&E placed by the alignment, through spatialdata-io: cells are the spots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sthist._constants import Key
from sthist._core._scale import set_microns_per_pixel
from sthist.datasets._vendor import annotating

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: The run's specification file (holds ``pixel_size``, µm per morphology pixel) and the element names that
#: spatialdata-io gives the cells' circles and the aligned H&E found in the output folder.
SPECS_FILE = "experiment.xenium"
_CIRCLES = "cell_circles"
_ALIGNED_HE = "he_image"
#: Levels of the H&E pyramid are halved while the coarsest level is at least this many pixels on its short side.
_PYRAMID_MIN_PX = 2048


def xenium(
    path: str | Path,
    *,
    he_image: str | Path | None = None,
    alignment_file: str | Path | None = None,
) -> SpatialData:
    """Read the cells of a Xenium output and the post-run H&E, placed by its alignment: cells are the spots.

    Each cell becomes a spot at its centroid (a circle of the cell's area), so :func:`sthist.tl.fit` trains on
    cells and :func:`sthist.tl.predict` predicts at cell centres, with patches of the model's ``patch_size_um``.
    The alignment matrix (H&E pixels → morphology pixels, as Xenium Explorer exports it; rotation, flip,
    uniform scale and shift) carries the cells into the H&E's own pixels, which are the coordinate system
    ``'global'``: the H&E is used as scanned, never resampled. Its µm per pixel is ``pixel_size`` of
    ``experiment.xenium`` times the alignment's scale. Transcripts, boundaries, labels and the morphology
    images are not read: sthist needs none of them.

    Parameters
    ----------
    path
        Xenium output folder (``experiment.xenium``, ``cells.parquet``, ``cell_feature_matrix.h5``,
        ``cells.zarr.zip``).
    he_image
        The H&E image (e.g. ``<sample>_he_image.ome.tif``). By default the one spatialdata-io finds in ``path``
        (``*he_image.ome.tif``, with ``*he_imagealignment.csv`` beside it).
    alignment_file
        CSV of the 3 × 3 affine matrix from H&E pixels to morphology pixels; ``None`` when ``he_image`` is
        already registered to the morphology image.

    Returns
    -------
    A SpatialData section: the H&E (``'he'``), the cells as circles in H&E pixels (``'cells'``) and their
    counts as the table ``'table'`` (``obsm['spatial']``: the centroids in µm, as Xenium writes them).

    Examples
    --------
    >>> import sthist
    >>> sdata = sthist.datasets.xenium("outs/", he_image="outs/s1_he_image.ome.tif",
    ...                                alignment_file="outs/s1_he_imagealignment.csv")  # doctest: +SKIP
    """
    try:
        from spatialdata_io import xenium as read_xenium
        from spatialdata_io import xenium_aligned_image
    except ImportError as error:
        raise ImportError("Reading Xenium needs spatialdata-io: `pip install 'sthist[io]'`.") from error

    path = Path(path)
    specs_file = path / SPECS_FILE
    if not specs_file.is_file():
        raise FileNotFoundError(f"{specs_file} is missing; give the output folder of a Xenium run.")
    pixel_size = json.loads(specs_file.read_text()).get("pixel_size")
    if pixel_size is None or not pixel_size > 0:
        raise ValueError(
            f"{specs_file} has no positive 'pixel_size' (µm per pixel): the physical scale is unknown."
        )
    for given, what in ((he_image, "he_image"), (alignment_file, "alignment_file")):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"{what}={str(given)!r} is not a file.")
    if alignment_file is not None and he_image is None:
        raise ValueError(
            "alignment_file= places he_image=: give both, or neither to use the aligned H&E in the folder."
        )
    sdata = read_xenium(
        path, cells_boundaries=False, nucleus_boundaries=False, cells_as_circles=True, cells_labels=False,
        nucleus_labels=False, transcripts=False, morphology_mip=False, morphology_focus=False,
        aligned_images=he_image is None, cells_table=True,
    )  # fmt: skip
    if he_image is not None:
        image = _aligned_pyramid(xenium_aligned_image, he_image, alignment_file)
    elif _ALIGNED_HE in sdata.images:
        image = sdata.images[_ALIGNED_HE]
    else:
        raise FileNotFoundError(
            f"{path} has no aligned H&E (*he_image.ome.tif with *he_imagealignment.csv): pass he_image= and "
            "alignment_file= (the matrix from H&E pixels to morphology pixels, as Xenium Explorer exports it)."
        )
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, get_transformation, set_transformation

    # Patches are cut from the H&E as scanned, so the section's coordinate system is the H&E's pixels: the cells
    # are carried there through the alignment (µm → morphology pixels → H&E pixels), and the image is not resampled.
    to_morphology = get_transformation(image, to_coordinate_system="global").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )
    he_microns_per_pixel = _similarity_scale(to_morphology, alignment_file or path) * float(pixel_size)
    set_transformation(image, {"global": Identity()}, set_all=True)
    table = sdata.tables["table"]
    instance_key = table.uns[TableModel.ATTRS_KEY][TableModel.INSTANCE_KEY]
    circles = sdata.shapes[_CIRCLES].loc[table.obs[instance_key].to_numpy()]
    centres_um = np.c_[circles.geometry.x, circles.geometry.y]  # spatialdata-io's circles are in µm
    centres_px = (
        np.c_[centres_um / float(pixel_size), np.ones(len(centres_um))] @ np.linalg.inv(to_morphology).T
    )
    cells = ShapesModel.parse(
        centres_px[:, :2],
        geometry=0,
        radius=circles["radius"].to_numpy() / he_microns_per_pixel,
        index=circles.index,
        transformations={"global": Identity()},
    )
    section = SpatialData(
        images={"he": image},
        shapes={"cells": cells},
        tables={"table": annotating(table, "cells", instance_key=instance_key)},
    )
    set_microns_per_pixel(
        section,
        he_microns_per_pixel,
        source=f"pixel_size of {SPECS_FILE} ({pixel_size} µm) × the alignment's scale (morphology px per H&E px)",
    )
    section.attrs[Key.attrs.ROOT].update({Key.attrs.DATASET: "xenium", "path": str(path)})
    return section


def _aligned_pyramid(read, he_image, alignment_file):
    """The H&E read by spatialdata-io's aligned-image reader, as a pyramid when it is large."""
    import tifffile

    with tifffile.TiffFile(he_image) as tif:
        shape = tif.series[0].shape
    short_side = min(s for s in shape if s > 4)  # ignore channel and singleton axes
    factors = []
    while short_side / 2 ** (len(factors) + 1) >= _PYRAMID_MIN_PX:
        factors.append(2)
    options = {"scale_factors": factors} if factors else {}
    return read(he_image, alignment_file, image_models_kwargs=options, c_coords=["r", "g", "b"])


#: Largest relative difference between the alignment's x and y scales (and its shear) read as square H&E pixels.
_MAX_ANISOTROPY = 0.02


def _similarity_scale(matrix, source) -> float:
    """Morphology pixels per H&E pixel of an alignment: rotation, uniform scale, flip and shift only."""
    linear = np.asarray(matrix, dtype=float)[:2, :2]
    sx, sy = np.linalg.norm(linear[:, 0]), np.linalg.norm(linear[:, 1])
    shear = abs(linear[:, 0] @ linear[:, 1]) / (sx * sy)
    if abs(sx - sy) / max(sx, sy) > _MAX_ANISOTROPY or shear > _MAX_ANISOTROPY:
        raise ValueError(
            f"The H&E alignment ({source}) scales x by {sx:.4g} and y by {sy:.4g} with shear {shear:.3g}: sthist needs "
            "square H&E pixels (rotation, uniform scale and shift). Resample the H&E to square pixels first."
        )
    return float(np.sqrt(sx * sy))
