"""A synthetic toy dataset for unit tests. It is not real data and is never presented as such."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._scale import set_microns_per_pixel


def _fields(x_um: np.ndarray, y_um: np.ndarray, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth tissue properties in [0, 1]: nucleus density and stain hue, as functions of position (µm)."""
    density = 0.5 + 0.5 * np.sin(2 * np.pi * x_um / 1100 + phase) * np.cos(2 * np.pi * y_um / 900 - phase)
    hue = 0.5 + 0.5 * np.sin(2 * np.pi * (x_um + y_um) / 1700 + 2 * phase)
    return density, hue


def toy(
    n_sections: int = 2,
    *,
    grid: int = 10,
    n_genes: int = 40,
    microns_per_pixel: float | list[float] = 1.0,
    pitch_um: float = 150.0,
    random_state: int = 0,
) -> dict:
    """Deterministic synthetic sections whose expression depends on image texture (for tests only).

    Each section is an RGB image of pink "stroma" with dark "nuclei"; nucleus density and stain hue vary
    smoothly over the tissue. Spots (55 µm diameter) sit on a ``grid × grid`` lattice with ``pitch_um``
    spacing. Gene expression is Poisson with a log-rate linear in the local density and hue (the first
    quarter of genes follow density, the second quarter hue, the rest are noise), so a model that sees
    texture can learn it. A left-hand margin of background (glass) carries no spots.

    Parameters
    ----------
    n_sections
        Number of sections (``'toy0'``, ``'toy1'``, …); odd sections belong to patient ``'Q'``, even to ``'P'``.
    grid
        Spots per side.
    n_genes
        Number of genes.
    microns_per_pixel
        Scale of the images (µm/px), one value or one per section.
    pitch_um
        Spot centre-to-centre distance in µm.
    random_state
        Seed of the random numbers.
    """
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    scales = (
        list(microns_per_pixel)
        if isinstance(microns_per_pixel, list | tuple)
        else [microns_per_pixel] * n_sections
    )
    if len(scales) != n_sections:
        raise ValueError("Give one microns_per_pixel per section.")
    rng = np.random.default_rng(random_state)
    gene_names = [f"gene{i:03d}" for i in range(n_genes)]
    base = rng.normal(0.0, 0.5, n_genes) - 6.5
    weights = np.zeros((2, n_genes))
    quarter = max(n_genes // 4, 1)
    weights[0, :quarter] = rng.uniform(1.5, 3.0, quarter) * rng.choice([-1, 1], quarter)
    weights[1, quarter : 2 * quarter] = rng.uniform(1.5, 3.0, quarter) * rng.choice([-1, 1], quarter)
    margin_um = 200.0
    result = {}
    for index in range(n_sections):
        scale = float(scales[index])
        phase = 0.7 * index
        extent_um = margin_um * 2 + pitch_um * (grid - 1) + 200.0
        size = int(np.ceil(extent_um / scale))
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) * scale
        density, hue = _fields(xs, ys, phase)
        tissue = xs >= margin_um - 100
        # Nuclei: Poisson points with density-dependent rate, dilated to discs of ~6 µm diameter.
        rate = (0.002 + 0.010 * density) * scale**2
        seeds = (rng.random((size, size)) < rate) & tissue
        radius = max(1, round(3.0 / scale))
        disc = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
        nuclei = ndimage.binary_dilation(seeds, structure=disc)
        stroma = np.stack([235 - 20 * hue, 170 + 40 * hue, 200 - 30 * hue], axis=-1)
        nucleus_colour = np.array([80.0, 50.0, 130.0])
        rgb = np.where(nuclei[..., None], nucleus_colour, stroma)
        rgb = np.where(tissue[..., None], rgb, 242.0)
        rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)

        ix, iy = np.meshgrid(np.arange(grid), np.arange(grid))
        centres_um = np.c_[margin_um + 100 + ix.ravel() * pitch_um, margin_um + 100 + iy.ravel() * pitch_um]
        spot_density, spot_hue = _fields(centres_um[:, 0], centres_um[:, 1], phase)
        log_rate = base + np.c_[spot_density, spot_hue] @ weights
        depth = rng.uniform(2000, 6000, len(centres_um))
        counts = rng.poisson(np.exp(log_rate) * depth[:, None] * 20)
        name = f"toy{index}"
        n_spots = len(centres_um)
        obs = pd.DataFrame(
            {
                Key.obs.SECTION: pd.Categorical([name] * n_spots),
                Key.obs.PATIENT: pd.Categorical(["Q" if index % 2 else "P"] * n_spots),
                "density": spot_density,
                "hue": spot_hue,
                Key.obs.REGION: pd.Categorical(["spots"] * n_spots),
                Key.obs.INSTANCE: np.arange(n_spots),
            },
            index=pd.Index([f"{name}_{i}" for i in range(n_spots)], name="spot"),
        )
        table = TableModel.parse(
            ad.AnnData(
                X=sparse.csr_matrix(counts.astype(np.int32)), obs=obs, var=pd.DataFrame(index=gene_names)
            ),
            region="spots",
            region_key=Key.obs.REGION,
            instance_key=Key.obs.INSTANCE,
        )
        centres_px = centres_um / scale
        shapes = ShapesModel.parse(
            gpd.GeoDataFrame(
                {"radius": np.full(n_spots, 27.5 / scale)},
                geometry=gpd.points_from_xy(centres_px[:, 0], centres_px[:, 1]),
                index=pd.Index(np.arange(n_spots), name=Key.obs.INSTANCE),
            ),
            transformations={DEFAULT_COORDINATE_SYSTEM: Identity()},
        )
        image = Image2DModel.parse(
            rgb.transpose(2, 0, 1),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            scale_factors=[2, 2],
            transformations={DEFAULT_COORDINATE_SYSTEM: Identity()},
        )
        sdata = SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table})
        set_microns_per_pixel(sdata, scale, source="synthetic toy dataset")
        sdata.attrs[Key.attrs.ROOT].update({Key.attrs.DATASET: "toy (synthetic)", Key.attrs.SECTION: name})
        result[name] = sdata
    return result
