"""`python -m hvdtrain ...` entry point."""

import sys

from hvdtrain.cli import main

# Guarded: data worker processes start with `spawn`, which imports this module again as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
