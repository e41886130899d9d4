"""`python -m sparse_lens ...` (and `torchrun -m sparse_lens train ...`) runs the CLI."""

import sys

from sparse_lens.cli import main

if __name__ == "__main__":
    sys.exit(main())
