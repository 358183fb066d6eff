"""The ``sthist`` command line.

One module per subcommand (``demo``, ``fit``, ``predict``, ``qc``, ``evaluate``, ``plot``), their shared
helpers, and flags generated from the configuration dataclasses.
"""

from sthist.cli._common import UserError
from sthist.cli._main import build_parser, cli_message, main

__all__ = ["UserError", "build_parser", "cli_message", "main"]
