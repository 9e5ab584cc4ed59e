"""``python -m medcore``: the command line of :mod:`medcore.flows.cli`."""
import sys

from medcore.flows.cli import main

if __name__ == "__main__":
    sys.exit(main())
