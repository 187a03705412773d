"""``python -m rsgeo_prune``: the ``rsgeo-prune`` command (torchrun starts it this way: ``torchrun ... -m
rsgeo_prune``)."""

import sys

from .cli import main

sys.exit(main())
