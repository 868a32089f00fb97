"""``python -m hessntk`` runs the command line (see :mod:`hessntk.cli`)."""

import sys

from hessntk.cli import main

if __name__ == "__main__":
    sys.exit(main())
