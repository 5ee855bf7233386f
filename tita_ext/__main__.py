"""`python3 -m tita_ext ...`: the `tita-ext` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
