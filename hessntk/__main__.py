"""``python -m hessntk`` runs the command line."""

import sys

from hessntk.cli import main

sys.exit(main())
