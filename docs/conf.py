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
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
# No network on the build machines: keep cross-project links off unless an inventory is reachable.
intersphinx_mapping = {}
html_theme = "furo"
html_title = "sthist"
suppress_warnings = ["config.cache"]
