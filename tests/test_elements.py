"""Element resolution: missing or ambiguous images/tables/spots give clear errors and change nothing."""

import numpy as np
import pytest
from spatialdata import SpatialData
from spatialdata.models import TableModel

import sthist

from .conftest import marked_section


def test_no_image():
    sdata = marked_section()
    del sdata.images["he"]
    with pytest.raises(ValueError, match="has no image"):
        sthist.pp.patch_geometry(sdata)


def test_no_table():
    sdata = marked_section()
    del sdata.tables["table"]
    with pytest.raises(ValueError, match="has no table"):
        sthist.pp.patch_geometry(sdata)


def test_ambiguous_images_are_listed():
    sdata = marked_section()
    sdata.images["he_copy"] = sdata.images["he"]
    with pytest.raises(ValueError, match=r"Several images .*\['he', 'he_copy'\].*image_key="):
        sthist.pp.patch_geometry(sdata)
    assert sthist.pp.patch_geometry(sdata, image_key="he_copy").centres.shape == (2, 2)
    with pytest.raises(KeyError, match="No image named 'nope'"):
        sthist.pp.patch_geometry(sdata, image_key="nope")


def test_ambiguous_tables_are_listed():
    sdata = marked_section()
    sdata.tables["other"] = sdata.tables["table"].copy()
    with pytest.raises(ValueError, match=r"Several tables .*\['other', 'table'\]"):
        sthist.pp.patch_geometry(sdata)


def test_table_not_annotating_spots():
    sdata = marked_section()
    table = sdata.tables["table"].copy()
    del table.uns["spatialdata_attrs"]
    bare = SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table}, attrs=sdata.attrs
    )
    with pytest.raises(ValueError, match="does not annotate any element"):
        sthist.pp.patch_geometry(bare)


def test_table_naming_missing_spots():
    sdata = marked_section()
    table = sdata.tables["table"]
    table.obs["spot_id"] = np.array([0, 7])
    with pytest.raises(ValueError, match="name spots that shapes 'spots' does not contain"):
        sthist.pp.patch_geometry(sdata)


def test_table_annotating_something_else():
    sdata = marked_section()
    table = sdata.tables["table"].copy()
    del table.uns["spatialdata_attrs"]
    table.obs["region"] = "cells"
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="spot_id")
    bare = SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table}, attrs=sdata.attrs
    )
    with pytest.raises(ValueError, match=r"annotates \['cells'\], but none of these is a shapes element"):
        sthist.pp.patch_geometry(bare)


def test_wrong_channels_or_dtype():
    from spatialdata.models import Image2DModel

    sdata = marked_section()
    rgb = np.asarray(sdata.images["he"].data)
    sdata.images["he"] = Image2DModel.parse(rgb[:2], dims=("c", "y", "x"))
    with pytest.raises(ValueError, match="2 channels; an RGB H&E image with 3 channels"):
        sthist.pp.patch_geometry(sdata)
    sdata.images["he"] = Image2DModel.parse(rgb.astype(np.float32) / 255, dims=("c", "y", "x"))
    with pytest.raises(ValueError, match="dtype float32; 8-bit RGB"):
        sthist.pp.patch_geometry(sdata)
