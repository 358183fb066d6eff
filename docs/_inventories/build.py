"""Write the small intersphinx inventories the docs link to (``python docs/_inventories/build.py``).

The documentation is built on machines without internet, where Sphinx cannot download the projects'
``objects.inv``. These hand-made inventories list the few objects sthist's docs refer to, with the pages
where each project documents them; ``docs/conf.py`` reads them first and the online inventory only if
they are missing.
"""

from __future__ import annotations

import zlib
from pathlib import Path

INVENTORIES = {
    "anndata": ("0.12", [
        ("anndata.AnnData", "py:class", "generated/anndata.AnnData.html#anndata.AnnData"),
        ("AnnData", "py:class", "generated/anndata.AnnData.html#anndata.AnnData"),
    ]),
    "spatialdata": ("0.7", [
        ("spatialdata.SpatialData", "py:class", "generated/spatialdata.SpatialData.html#spatialdata.SpatialData"),
        ("SpatialData", "py:class", "generated/spatialdata.SpatialData.html#spatialdata.SpatialData"),
        ("spatialdata.get_pyramid_levels", "py:function",
         "generated/spatialdata.get_pyramid_levels.html#spatialdata.get_pyramid_levels"),
        ("spatialdata.models.get_table_keys", "py:function",
         "generated/spatialdata.models.get_table_keys.html#spatialdata.models.get_table_keys"),
    ]),
    "torch": ("2.14", [
        ("torch.Tensor", "py:class", "tensors.html#torch.Tensor"),
        ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
        ("torch.device", "py:class", "tensor_attributes.html#torch.device"),
        ("torch.utils.data.Dataset", "py:class", "data.html#torch.utils.data.Dataset"),
    ]),
}  # fmt: skip


def write(folder: Path) -> None:
    for project, (version, entries) in INVENTORIES.items():
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {project}\n# Version: {version}\n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in entries)
        (folder / f"{project}.inv").write_bytes(header.encode() + zlib.compress(body.encode()))


if __name__ == "__main__":
    write(Path(__file__).parent)
