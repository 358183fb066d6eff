"""sthist: predict spatially resolved gene expression from H&E histology.

Submodules load on first use, so ``import sthist`` stays light (no torch):
``sthist.pp`` (preprocessing), ``sthist.datasets``, ``sthist.data`` (torch datasets).
"""

from __future__ import annotations

import importlib
from importlib.metadata import version

from sthist._settings import settings

__version__ = version("sthist")
_SUBMODULES = ("pp", "tl", "pl", "io", "datasets", "data", "models")
__all__ = ["settings", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"sthist.{name}")
    raise AttributeError(f"module 'sthist' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
