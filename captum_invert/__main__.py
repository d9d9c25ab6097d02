"""``python -m captum_invert``: the ``captum-invert`` command line."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
