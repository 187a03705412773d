"""Run by torchrun in tests: ``rsgeo-prune train-dit`` in each process, then each rank writes the sha256 of the
weights it
ended with (model and EMA) to ``DIGEST_TEMPLATE`` (``{rank}`` filled in), so a test can compare the ranks.

    torchrun --nproc_per_node 2 tests/train/ddp_digest.py DIGEST_TEMPLATE train-dit LATENTS --out RUN ...
"""

import os
import sys
from pathlib import Path

from helpers import weights_digest  # this script's folder is first on sys.path

from rsgeo_prune.cli import main  # the one entry point, as `torchrun -m rsgeo_prune` runs it
from rsgeo_prune.train import trainer


def run(template: str, argv: list[str]) -> int:
    built = []
    real = trainer.build_training

    def keep(*args, **kwargs):  # the model and EMA this rank trains
        built.append(real(*args, **kwargs))
        return built[-1]

    trainer.build_training = keep
    code = main(argv)
    if code == 0:
        model, ema, _ = built[-1]
        Path(template.format(rank=os.environ.get("RANK", "0"))).write_text(weights_digest(model, ema))
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
