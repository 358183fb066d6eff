"""HER2-positive breast cancer, legacy Spatial Transcriptomics (Andersson et al., Nat. Commun. 12, 6012, 2021)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
from scipy import sparse

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._counts import check_raw_counts
from sthist._core._scale import fit_microns_per_pixel, set_microns_per_pixel
from sthist._logging import logger
from sthist.datasets._registry import fetch, registry

#: Legacy ST geometry: spot diameter and centre-to-centre pitch of the spot array, in µm.
SPOT_DIAMETER_UM = 100.0
SPOT_PITCH_UM = 200.0

#: H&E images kept in the source snapshot, by section. A1 and A2 are downsampled PNGs (2000 px wide).
IMAGE_FILES = {
    "A1": "app/www/imgs/A1_HE_image_dark.png",
    "A2": "app/www/imgs/A2_HE_image_dark.png",
    "B4": "data/ST-imgs/B/B4/BT10737_D2_HE.jpg",
    "C2": "data/ST-imgs/C/C2/5714_HE_BT_C2.jpg",
    "C3": "data/ST-imgs/C/C3/5714_HE_BT_D1.jpg",
    "C4": "data/ST-imgs/C/C4/5714_HE_BT_D2.jpg",
    "C5": "data/ST-imgs/C/C5/5714_HE_BT_E1.jpg",
    "C6": "data/ST-imgs/C/C6/5714_HE_BT_E2.jpg",
}
#: Width (px) of the full-resolution images that the A1/A2 PNGs were downsampled from, to which the spot
#: pixel coordinates refer (source: ``app/data/dims.list`` of the repository).
DOWNSAMPLED_FROM_WIDTH = {"A1": 6954, "A2": 6966}

#: Breast-cancer marker genes for evaluation (MG), as used for HER2ST in the CMRCNet and BLEEP evaluations:
#: HER2 amplicon (ERBB2, GRB7), luminal (ESR1, FOXA1, GATA3, KRT8, KRT18), proliferation (MKI67), stroma
#: (COL1A1, COL1A2, COL3A1, FN1, POSTN), immune (PTPRC, CD74, IGKC) and adipose (ADIPOQ, FABP4) markers.
MARKER_GENES = [
    "ERBB2", "GRB7", "ESR1", "FOXA1", "GATA3", "KRT8", "KRT18", "MKI67",
    "COL1A1", "COL1A2", "COL3A1", "FN1", "POSTN", "PTPRC", "CD74", "IGKC", "ADIPOQ", "FABP4",
]  # fmt: skip

#: Below this fraction of spots on tissue, a section's image is reported as probably misregistered.
REGISTRATION_WARNING_FRACTION = 0.9


def sections_available() -> list[str]:
    """All 36 sections with counts, in order (A1 … H3)."""
    names = [m.group(1) for p in registry("her2st") if (m := re.fullmatch(r"data/ST-cnts/(\w+)\.tsv\.gz", p))]
    return sorted(names)


def _read_counts(section: str) -> pd.DataFrame:
    counts = pd.read_csv(fetch("her2st", f"data/ST-cnts/{section}.tsv.gz"), sep="\t", index_col=0)
    if counts.empty:
        raise ValueError(f"HER2ST section {section} has no spots in its count file.")
    return counts


def _read_labels(section: str) -> pd.Series | None:
    path = f"data/ST-pat/lbl/{section}_labeled_coordinates.tsv"
    if path not in registry("her2st"):
        return None
    labels = pd.read_csv(fetch("her2st", path), sep="\t").dropna(subset=["x", "y"])
    # The label files give the refined (sub-step) array coordinates; round to the spot's integer position.
    keys = [f"{int(round(x))}x{int(round(y))}" for x, y in zip(labels["x"], labels["y"], strict=True)]
    return pd.Series(labels["label"].to_numpy(), index=keys).loc[lambda s: ~s.index.duplicated()]


def _read_image(section: str) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        # The full-resolution JPEGs (~92 Mpx) exceed PIL's decompression-bomb warning threshold.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(fetch("her2st", IMAGE_FILES[section])) as image:
            return np.asarray(image.convert("RGB"))


def _load_section(section: str, *, with_image: bool, scale_factors: Sequence[int], check_registration: bool):
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    counts = _read_counts(section)
    spots = pd.read_csv(fetch("her2st", f"data/ST-spotfiles/{section}_selection.tsv"), sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    shared = counts.index.intersection(spots.index, sort=False)
    if len(shared) == 0:
        raise ValueError(f"HER2ST section {section}: no spot of the count file is in its spot file.")
    if len(shared) < len(counts):
        logger.info(
            "%s: %d of %d counted spots have no position and are left out",
            section,
            len(counts) - len(shared),
            len(counts),
        )
    counts, spots = counts.loc[shared], spots.loc[shared]
    matrix = sparse.csr_matrix(counts.to_numpy())
    check_raw_counts(matrix, where=f"HER2ST {section} counts")
    matrix = matrix.astype(np.int32)

    microns_per_pixel, rms = fit_microns_per_pixel(
        spots[["new_x", "new_y"]].to_numpy(), spots[["pixel_x", "pixel_y"]].to_numpy(), pitch_um=SPOT_PITCH_UM
    )
    obs = pd.DataFrame(
        {
            Key.obs.SECTION: pd.Categorical([section] * len(shared)),
            Key.obs.PATIENT: pd.Categorical([section[0]] * len(shared)),
            Key.obs.ARRAY_X: spots["x"].to_numpy(),
            Key.obs.ARRAY_Y: spots["y"].to_numpy(),
            Key.obs.REGION: pd.Categorical(["spots"] * len(shared)),
            Key.obs.INSTANCE: np.arange(len(shared)),
        },
        index=pd.Index([f"{section}_{key}" for key in shared], name="spot"),
    )
    labels = _read_labels(section)
    if labels is not None:
        obs[Key.obs.LABEL] = pd.Categorical(labels.reindex(shared).to_numpy())
    var = pd.DataFrame(index=pd.Index(counts.columns.astype(str), name="gene"))
    table = ad.AnnData(X=matrix, obs=obs, var=var)
    table.var_names_make_unique()
    table.obsm[Key.obsm.SPATIAL] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)  # as scanpy expects
    table = TableModel.parse(table, region="spots", region_key=Key.obs.REGION, instance_key=Key.obs.INSTANCE)

    centres = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(len(shared), SPOT_DIAMETER_UM / 2 / microns_per_pixel)},
            geometry=gpd.points_from_xy(centres[:, 0], centres[:, 1]),
            index=pd.Index(np.arange(len(shared)), name=Key.obs.INSTANCE),
        ),
        transformations={DEFAULT_COORDINATE_SYSTEM: Identity()},
    )
    images = {}
    if with_image:
        rgb = _read_image(section)
        if section in DOWNSAMPLED_FROM_WIDTH:
            factor = DOWNSAMPLED_FROM_WIDTH[section] / rgb.shape[1]
            transformation = Scale([factor, factor], axes=("y", "x"))
        else:
            transformation = Identity()
        images["he"] = Image2DModel.parse(
            rgb.transpose(2, 0, 1),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            scale_factors=list(scale_factors) or None,
            transformations={DEFAULT_COORDINATE_SYSTEM: transformation},
            chunks=(3, 2048, 2048),
        )
    sdata = SpatialData(images=images, shapes={"spots": shapes}, tables={"table": table})
    set_microns_per_pixel(
        sdata,
        microns_per_pixel,
        source=(
            f"least-squares fit of spot pixel against array coordinates ({SPOT_PITCH_UM:g} µm pitch), "
            f"{len(shared)} spots, rms residual {rms:.2f} px"
        ),
    )
    sdata.attrs[Key.attrs.ROOT].update(
        {Key.attrs.DATASET: "her2st", Key.attrs.SECTION: section, Key.attrs.PATIENT: section[0]}
    )
    if with_image and check_registration:
        _check_registration(sdata, section)
    return sdata


def _check_registration(sdata, section: str) -> None:
    from sthist.pp import qc_spots

    qc = cast("pd.DataFrame", qc_spots(sdata, inplace=False))  # inplace=False returns the columns
    fraction = float(qc[Key.obs.QC_ON_TISSUE].mean())
    sdata.attrs[Key.attrs.ROOT][Key.attrs.REGISTRATION] = fraction
    if fraction < REGISTRATION_WARNING_FRACTION:
        warnings.warn(
            f"HER2ST {section}: only {fraction:.0%} of the spots lie on tissue in the image; the image is probably "
            "misregistered to the spots (A2 is known to be). Leave the section out of image-based training or "
            "register it first.",
            UserWarning,
            stacklevel=3,
        )


def her2st(
    sections: str | Sequence[str] | None = None,
    *,
    require_image: bool = True,
    scale_factors: Sequence[int] = (2, 2, 2, 2),
    check_registration: bool = True,
) -> dict:
    """HER2-positive breast cancer sections (legacy ST, 100 µm spots on a 200 µm grid) as SpatialData objects.

    Files come through a hashed registry pinned to commit ``85df741`` of ``almaan/her2st``; they are read
    from ``settings.data_dir / 'her2st'`` (``STHIST_DATA_DIR``) and downloaded only when missing there. Cite
    Andersson et al., Nature Communications 12, 6012 (2021).

    Each object holds

    - ``images['he']``: the H&E image (multiscale, uint8 RGB), placed in coordinate system ``'global'``,
      whose unit is one pixel of the full-resolution scan. The A1/A2 images are 2000 px-wide downsampled
      PNGs: they are placed by a scale transformation, the spot coordinates are left as recorded.
    - ``shapes['spots']``: circles at the recorded spot centres, radius 50 µm expressed in pixels.
    - ``tables['table']``: raw counts (sparse int32), ``obs`` with ``section``, ``patient``, ``array_x``,
      ``array_y`` and ``label`` (pathologist annotation, for A1, B1, C1, D1, E1, F1, G2, H1).
    - ``attrs['sthist']``: µm per pixel of ``'global'``, derived by a least-squares fit of spot pixel
      coordinates against array coordinates (200 µm pitch), with the fit's provenance; and the fraction of
      spots on tissue (registration check; a warning is issued below 90 %).

    Parameters
    ----------
    sections
        Section names (``'A1'`` … ``'H3'``). By default the 8 sections with an image (A1, A2, B4, C2-C6), or
        all 36 with ``require_image=False``.
    require_image
        Refuse sections without an image. With ``False`` those sections are loaded as expression-only data
        (spots and table, no image); sections with an image still get it.
    scale_factors
        Downsampling factors of the image pyramid.
    check_registration
        Measure the fraction of spots on tissue and warn when the image looks misregistered.

    Returns
    -------
    Dict of section name → SpatialData.
    """
    available = sections_available()
    if sections is None:
        sections = list(IMAGE_FILES) if require_image else available
    elif isinstance(sections, str):
        sections = [sections]
    sections = list(sections)
    unknown = [s for s in sections if s not in available]
    if unknown:
        raise KeyError(f"Unknown HER2ST sections {unknown}; available: {available}.")
    if require_image:
        without = [s for s in sections if s not in IMAGE_FILES]
        if without:
            raise ValueError(
                f"HER2ST sections {without} have no H&E image in the source snapshot (only {list(IMAGE_FILES)} "
                "have one). Pass require_image=False to load them as expression-only data."
            )
    result = {}
    for section in sections:
        result[section] = _load_section(
            section,
            with_image=section in IMAGE_FILES,
            scale_factors=scale_factors,
            check_registration=check_registration,
        )
    return result
