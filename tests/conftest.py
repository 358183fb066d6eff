from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _shared import tiny_fit

#: The real datasets live beside the repository root, in ../shared/data (read-only).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("STHIST_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _require_real_data(name: str) -> Path:
    folder = Path(os.environ["STHIST_DATA_DIR"]) / name
    if not folder.is_dir():
        message = f"real dataset {name!r} not found under {folder.parent}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must have ../shared/data beside the repository)")
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    return _require_real_data("her2st")


@pytest.fixture(scope="session")
def visium_dir() -> Path:
    return _require_real_data("seurat-visium")


@pytest.fixture(scope="session")
def her2st_images(her2st_dir):
    """The 8 image-bearing HER2ST sections, loaded once per session (with the A2 registration warning).

    Shared between tests: copy before modifying.
    """
    import sthist

    with pytest.warns(UserWarning, match="A2: only .* of the spots lie on tissue"):
        return sthist.datasets.her2st()


@pytest.fixture
def toy():
    import sthist

    return sthist.datasets.toy(2, grid=6, n_genes=12, random_state=0)


# ------------------------------------------------------------------------------------------ tiny fits


@pytest.fixture(scope="session")
def toy_model():
    """A model fitted once per session on ``sthist.datasets.toy()["toy0"]`` with ``_shared.TINY_FIT``.

    Shared between tests (and the docstring examples, as ``model``): use it only where any trained model
    will do, and never change it.
    """
    import sthist

    sthist.settings.progress = False
    return sthist.tl.fit({"toy0": sthist.datasets.toy()["toy0"]}, **tiny_fit())


@pytest.fixture(autouse=True)
def _docstring_namespace(request):
    """Names the docstring examples use without defining them: ``sthist``, ``sections`` and ``model``.

    ``sections`` is a fresh ``sthist.datasets.toy()`` for every example (examples write into it); ``model`` is the
    session's :func:`toy_model`. Filled only for tests that read pytest's ``doctest_namespace``, so that other tests
    do not pay for the fit.
    """
    if "doctest_namespace" not in request.fixturenames and type(request.node).__name__ != "DoctestItem":
        return
    import sthist

    namespace = request.getfixturevalue("doctest_namespace")
    namespace["sthist"] = sthist
    namespace["sections"] = sthist.datasets.toy()
    namespace["model"] = request.getfixturevalue("toy_model")


def marked_section(
    *, microns_per_pixel: float = 1.0, size_px: int = 400, centres_px=None, image_scale: float = 1.0
):
    """A white image with a red square of 56 µm side centred on each spot, for geometry tests.

    ``image_scale`` places a downsampled image (its pixels are ``image_scale`` coordinate units).
    """
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    import sthist

    if centres_px is None:
        centres_px = np.array([[150.3, 170.8], [260.6, 220.2]])
    centres_px = np.asarray(centres_px, dtype=float)
    image_size = int(round(size_px / image_scale))
    rgb = np.full((image_size, image_size, 3), 255, dtype=np.uint8)
    half = 28.0 / microns_per_pixel / image_scale
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    for cx, cy in centres_px / image_scale:
        inside = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
        rgb[inside] = (255, 0, 0)
    n = len(centres_px)
    table = TableModel.parse(
        ad.AnnData(
            X=np.ones((n, 3), dtype=np.float32),
            obs=pd.DataFrame(
                {"region": pd.Categorical(["spots"] * n), "spot_id": np.arange(n)},
                index=[f"s{i}" for i in range(n)],
            ),
            var=pd.DataFrame(index=["g0", "g1", "g2"]),
        ),
        region="spots",
        region_key="region",
        instance_key="spot_id",
    )
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(n, 10.0)}, geometry=gpd.points_from_xy(centres_px[:, 0], centres_px[:, 1])
        ),
        transformations={"global": Identity()},
    )
    transformation = Identity() if image_scale == 1.0 else Scale([image_scale, image_scale], axes=("y", "x"))
    image = Image2DModel.parse(
        rgb.transpose(2, 0, 1), dims=("c", "y", "x"), transformations={"global": transformation}
    )
    sdata = SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table})
    sthist.pp.set_microns_per_pixel(sdata, microns_per_pixel)
    return sdata
