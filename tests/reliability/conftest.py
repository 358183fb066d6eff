"""Faults and bad input (issue 11): nothing lost, nothing silently wrong, no hang, one clear line per mistake.

The modules of this folder share one small trained model (fitted once per session) and its toy sections.
"""

from __future__ import annotations

import pytest
from _shared import tiny_fit

import sthist

#: Two 6 × 6 sections of 8 genes; the model trains on toy0 with 112 µm patches, 2 epochs of batches of 16.
FIT_OPTIONS = tiny_fit(patch_size_um=112.0, max_epochs=2, batch_size=16)


@pytest.fixture
def fit_options():
    """The options the shared ``model`` was fitted with (a fresh dict: tests may change it)."""
    return tiny_fit(**FIT_OPTIONS)


@pytest.fixture(scope="session")
def sections():
    """Shared between the tests of this folder: copy before modifying (``_shared.copy_section``)."""
    sthist.settings.progress = False
    return sthist.datasets.toy(2, grid=6, n_genes=8, random_state=5)


@pytest.fixture(scope="session")
def model(sections):
    return sthist.tl.fit({"toy0": sections["toy0"]}, **FIT_OPTIONS)


@pytest.fixture(scope="session")
def model_dir(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("models") / "model")


@pytest.fixture
def store(sections, tmp_path):
    path = tmp_path / "toy1.zarr"
    sections["toy1"].write(path)
    return path
