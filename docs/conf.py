"""Sphinx configuration of the sthist documentation."""

from importlib.metadata import version as _version

project = "sthist"
author = "sthist developers"
copyright = "2026, sthist developers"
release = _version("sthist")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_enable_extensions = ["colon_fence", "dollarmath"]
# The tutorial notebook is stored with its outputs (``make tutorial``); the docs build shows them as stored.
nb_execution_mode = "off"
nb_merge_streams = True
exclude_patterns = ["_build", "_inventories", "**.ipynb_checkpoints"]
# The build machines have no network: each project's inventory is read from docs/_inventories (written by
# its build.py, listing the objects these docs link to) before the online one is tried.
intersphinx_mapping = {
    "anndata": ("https://anndata.readthedocs.io/en/stable/", ("_inventories/anndata.inv", None)),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", ("_inventories/spatialdata.inv", None)),
    "torch": ("https://docs.pytorch.org/docs/stable/", ("_inventories/torch.inv", None)),
}
html_theme = "furo"
html_title = "sthist"
suppress_warnings = ["config.cache"]
