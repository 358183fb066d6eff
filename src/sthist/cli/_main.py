"""The ``sthist`` command line: the parser of its subcommands, and one-line answers to mistakes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sthist.cli import _demo, _evaluate, _fit, _plot, _predict, _qc
from sthist.cli._common import UserError
from sthist.cli._options import config_flags

#: The subcommands, in the order ``sthist --help`` lists them.
SUBCOMMANDS = (_demo, _fit, _predict, _qc, _evaluate, _plot)


def _version() -> str:
    from importlib.metadata import version

    return version("sthist")


def build_parser() -> argparse.ArgumentParser:
    """The ``sthist`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="sthist",
        description="Predict spatially resolved gene expression from H&E histology. Lengths are in µm, "
        "images in pixels; expression in log1p of counts per 10,000.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of one line"
    )
    parser.add_argument("--version", action="version", version=f"sthist {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(commands)
    return parser


#: Python keywords in sthist's messages and the command-line flags that set them.
_FLAGS = {
    **config_flags(*_fit.CONFIG_CLASSES, compound=True),
    "key_added": "--key",
    "qc_column": "--qc-column",
    "microns_per_pixel": "--microns-per-pixel",
    "stride_um": "--stride-um",
    "n_top": "--n-top",
    "patch_size_um": "--patch-size-um",
    "tta_views": "--tta-views",
    "smooth_um": "--smooth-um",
    "max_tiles": "--max-tiles",
    "table_key": "--table",
    "random_state": "--seed",
    "bounds": "--bounds",
}

#: One-word keywords, replaced only where a message writes them as ``keyword=`` or starts with them.
_WORD_FLAGS = {"k": "--k", "genes": "--genes", **config_flags(*_fit.CONFIG_CLASSES, compound=False)}


def cli_message(message: str) -> str:
    """``message`` with Python keywords replaced by the flags that set them (``overwrite=True`` → ``--overwrite``)."""
    import re

    message = re.sub(r"`?\boverwrite=True`?", "--overwrite", message)
    for keyword, flag in _FLAGS.items():
        message = re.sub(rf"(?<!['\w])`?\b{keyword}\b(=(?=[\s`.,;)]|$))?`?(?!')", flag, message)
    for keyword, flag in _WORD_FLAGS.items():
        message = re.sub(rf"(?<![\w.\[]){keyword}=", f"{flag} ", message)
        message = re.sub(rf"^{keyword} (must|is|exceeds)\b", rf"{flag} \1", message)
    message = message.replace(
        "run `sthist.tl.predict_tiles(sdata, model)` first", "run `sthist predict --tiles` first"
    )
    message = message.replace("(or pass its --key as key=)", "(with the same --key)")
    message = message.replace("run `sthist.tl.predict(sdata, model)` first", "run `sthist predict` first")
    return " ".join(message.split())


#: Errors that report a mistake in the input (one line); anything else is a fault (one line and --debug).
_USER_ERRORS = (
    UserError,
    ValueError,
    KeyError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    TimeoutError,
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` by default); returns the exit status.

    A mistake in the input prints one line, ``sthist <command>: error: …`` naming the flag to change, and
    returns 2; an unexpected failure prints one line and returns 1. ``--debug`` shows the traceback instead.
    """
    import warnings

    args = build_parser().parse_args(argv)
    # -v shows sthist's progress; other libraries stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("sthist").setLevel(logging.INFO if args.verbose else logging.WARNING)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning if not args.verbose else _show_every_warning
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"sthist {args.command}: interrupted; the store and the model folder are as they were",
            file=sys.stderr,
        )
        return 130
    except _USER_ERRORS as error:
        if args.debug:
            raise
        text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"sthist {args.command}: error: {cli_message(str(text))}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        print(
            f"sthist {args.command}: failed: {type(error).__name__}: {' '.join(str(error).split())[:500]} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = shown


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print sthist's warnings as one line each on stderr (``sthist: warning: …``).

    Other libraries' notices (zarr, spatialdata, on every write) are shown only with ``--verbose``.
    """
    from pathlib import Path

    import sthist

    if str(filename).startswith(str(Path(sthist.__file__).parent)):
        print(f"sthist: warning: {cli_message(str(message))}", file=sys.stderr)


def _show_every_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning, one line each, with the library it came from."""
    print(f"warning ({Path(filename).name}): {' '.join(str(message).split())}", file=sys.stderr)
