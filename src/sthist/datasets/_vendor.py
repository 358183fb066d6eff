"""Steps shared by the readers that go through spatialdata-io (Visium, Visium HD, Xenium)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sthist._constants import DEFAULT_COORDINATE_SYSTEM

if TYPE_CHECKING:
    import anndata as ad
    from spatialdata import SpatialData


def name_full_resolution_system(sdata: SpatialData, element) -> None:
    """Name ``'global'`` the coordinate system in which ``element`` is untransformed.

    That system is the element's full-resolution pixels, which spatialdata-io names after the dataset; a
    ValueError is raised when there is not exactly one.
    """
    from spatialdata.transformations import Identity, get_transformation

    systems = get_transformation(element, get_all=True)
    fullres = [name for name, t in systems.items() if isinstance(t, Identity)]
    if len(fullres) != 1:
        raise ValueError(f"Cannot tell the full-resolution coordinate system among {sorted(systems)}.")
    if fullres[0] != DEFAULT_COORDINATE_SYSTEM:
        sdata.rename_coordinate_systems({fullres[0]: DEFAULT_COORDINATE_SYSTEM})


def annotating(table: ad.AnnData, region: str, instance_key: str) -> ad.AnnData:
    """``table`` parsed again to annotate the shapes element ``region`` (a reader's element, renamed)."""
    from spatialdata.models import TableModel

    table.uns.pop(TableModel.ATTRS_KEY, None)
    table.obs["region"] = region
    table.obs["region"] = table.obs["region"].astype("category")
    return TableModel.parse(table, region=region, region_key="region", instance_key=instance_key)
