import numpy as np
import pytest

import sthist
from sthist.pp import fit_microns_per_pixel


def test_fit_recovers_scale_under_rotation_and_anisotropy():
    rng = np.random.default_rng(0)
    array_xy = np.c_[rng.integers(0, 30, 200), rng.integers(0, 30, 200)].astype(float)
    angle = np.deg2rad(3.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pixels_per_step = 200 / 0.7  # 0.7 µm/px on a 200 µm grid
    pixel_xy = array_xy @ (rotation * pixels_per_step).T + [500, 800] + rng.normal(0, 0.5, (200, 2))
    mpp, rms = fit_microns_per_pixel(array_xy, pixel_xy, pitch_um=200)
    assert mpp == pytest.approx(0.7, rel=1e-3)
    assert 0.3 < rms < 1.0


def test_fit_refuses_degenerate_input():
    with pytest.raises(ValueError, match="At least 3"):
        fit_microns_per_pixel(np.zeros((2, 2)), np.zeros((2, 2)), pitch_um=200)
    with pytest.raises(ValueError, match="degenerate"):
        fit_microns_per_pixel(
            np.c_[np.arange(5), np.arange(5)], np.c_[np.arange(5), np.arange(5)] * 3.0, pitch_um=200
        )


def test_unknown_scale_is_an_error_that_says_what_to_do(toy):
    sdata = next(iter(toy.values()))
    sdata.attrs.clear()
    with pytest.raises(ValueError, match="physical scale .* unknown.*set_microns_per_pixel"):
        sthist.pp.get_microns_per_pixel(sdata)
    with pytest.raises(ValueError, match="physical scale"):
        sthist.pp.patch_geometry(sdata)
    # An explicit value works without recording anything.
    assert sthist.pp.patch_geometry(sdata, microns_per_pixel=1.0).level_microns_per_pixel[0] >= 1.0
    assert sdata.attrs == {}


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_invalid_scale_refused(toy, value):
    sdata = next(iter(toy.values()))
    with pytest.raises(ValueError, match="positive number"):
        sthist.pp.set_microns_per_pixel(sdata, value)
    assert sthist.pp.get_microns_per_pixel(sdata) == 1.0
