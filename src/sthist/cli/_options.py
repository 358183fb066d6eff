"""Command-line flags generated from the configuration dataclasses: one flag per field, its help and default.

Each field of :class:`~sthist.models.ArchitectureConfig`, :class:`~sthist.models.TrainingConfig` and
:class:`~sthist.models.DataConfig` becomes ``--field-name`` with the field's help text and default, so that a
flag cannot drift from the setting it sets. Optional fields accept ``none``; booleans get ``--x/--no-x``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import Field, fields

_BASE_TYPES: dict[str, Callable] = {"int": int, "float": float, "str": str}


def flag_name(name: str) -> str:
    """The flag of a field (``context_um`` → ``--context-um``)."""
    return "--" + name.replace("_", "-")


def plain_text(text: str) -> str:
    """Help text without reStructuredText markup, ``%`` escaped for argparse."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


def _format_default(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _converter(item: Field) -> Callable[[str], object]:
    """Text → value for a field: its ``parse`` metadata or its annotated type; ``none`` for optional fields."""
    annotation = str(item.type)
    optional = "None" in annotation
    parse = item.metadata.get("parse") or _BASE_TYPES[annotation.split("|")[0].strip()]

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError:
            kind = annotation.replace("|", "or")
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None

    convert.__name__ = item.name
    return convert


def add_config_flags(parser: argparse.ArgumentParser, config_class) -> None:
    """One flag per field of ``config_class``, in a group named after it."""
    summary = (config_class.__doc__ or "").strip().splitlines()[0]
    group = parser.add_argument_group(config_class.__name__, plain_text(summary))
    for item in fields(config_class):
        names = [flag_name(item.name), *item.metadata.get("aliases", ())]
        help_text = plain_text(item.metadata["help"])
        if str(item.type) == "bool":
            group.add_argument(
                *names, dest=item.name, action=argparse.BooleanOptionalAction, default=item.default,
                help=f"{help_text} (default: %(default)s)",
            )  # fmt: skip
        else:
            group.add_argument(
                *names, dest=item.name, type=_converter(item), default=item.default, metavar=item.name.upper(),
                help=f"{help_text} (default: {_format_default(item.default)})",
            )  # fmt: skip


def config_values(args: argparse.Namespace, config_class) -> dict:
    """The values of ``config_class``'s fields as parsed from the command line."""
    return {item.name: getattr(args, item.name) for item in fields(config_class)}


def config_flags(*config_classes, compound: bool) -> dict[str, str]:
    """Field name → flag, for the messages that name a setting.

    ``compound=True``: the names with an underscore (unambiguous in prose); ``False``: the one-word names
    (``views``, ``heads``), which messages name only as ``views=…``.
    """
    return {
        item.name: flag_name(item.name)
        for cls in config_classes
        for item in fields(cls)
        if ("_" in item.name) == compound
    }
