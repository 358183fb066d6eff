"""Helpers shared by test modules: the options of a quick fit on the toy sections, and section copies.

Test modules layer their own changes over :data:`TINY_FIT` with :func:`tiny_fit`, which merges configuration
dicts (``architecture``, ``training``, ``data``) field by field as ``sthist.tl._fit.merge_fit_options`` does;
conftest's session-scoped ``toy_model`` is fitted with them.
"""

from __future__ import annotations

import copy

#: The tiny random backbone on 64 µm patches, 5 neighbours, one epoch of batches of 32, one view per patch.
TINY_FIT = {
    "backbone": "tiny",
    "patch_size_um": 64,
    "k": 5,
    "max_epochs": 1,
    "batch_size": 32,
    "training": {"views": 1},
}


def tiny_fit(**override) -> dict:
    """:data:`TINY_FIT` with ``override`` merged over it; a fresh dict each call (callers may change it)."""
    from sthist.tl._fit import merge_fit_options

    return merge_fit_options(copy.deepcopy(TINY_FIT), override)


def copy_section(sdata):
    """A copy of ``sdata`` whose tables and attrs can be changed (images and shapes are shared, read-only)."""
    from spatialdata import SpatialData

    return SpatialData(
        images=dict(sdata.images),
        shapes=dict(sdata.shapes),
        tables={k: v.copy() for k, v in sdata.tables.items()},
        attrs=copy.deepcopy(sdata.attrs),
    )


def resigned(folder, tensors: dict, config: dict) -> None:
    """Write weights and config with matching checksum and digest (as a tool that edits both would)."""
    import json

    from safetensors.torch import save_file

    from sthist.models._backbones import file_sha256
    from sthist.models._save_load import CONFIG_DIGEST, config_digest

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, folder / "model.safetensors", metadata={CONFIG_DIGEST: config_digest(config)})
    (folder / "config.json").write_text(
        json.dumps(dict(config, weights_sha256=file_sha256(folder / "model.safetensors")))
    )
