"""Plots: expression on tissue."""

from sthist.pl._expression import expression

__all__ = ["expression"]
