"""``python -m sthist``: the command line (:mod:`sthist.cli`)."""

import sys

from sthist.cli import main

if __name__ == "__main__":
    sys.exit(main())
