"""The old name of :mod:`medcore.scale.distributed`, kept for one release so that
``accelerate launch --config_file ... -m medcore.distributed train ...`` still works: it runs
``medcore.scale.distributed``'s main. Use ``-m medcore.scale.distributed``."""
import sys

from medcore.scale.distributed import main

if __name__ == "__main__":
    sys.exit(main())
