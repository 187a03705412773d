"""``python -m rsgeo_prune …``: the ``rsgeo-prune`` command line, also what torchrun starts in every process::

    torchrun --nproc_per_node 8 -m rsgeo_prune train-dit LATENTS --out RUN --model DiT-XL/2
"""

import sys

from .cli import main

sys.exit(main())
