"""Options are checked when built, with the option's name, value and rule (InvalidOption), and the
pruning reasons and stage counts are defined once (status)."""

import math

import numpy as np
import pandas as pd
import pytest

from rsgeo_prune.config import DEFAULT_K, RunConfig, TileConfig
from rsgeo_prune.errors import InvalidOption, RSGeoPruneError
from rsgeo_prune.status import REASONS, pruned_counts, stage_counts, summary_line

BAD = [
    (TileConfig, dict(tile_size=0), "tile_size"),
    (TileConfig, dict(stride=-3), "stride"),
    (TileConfig, dict(max_nodata=1.5), "max_nodata"),
    (TileConfig, dict(min_urban=0.2), "min_urban"),  # needs a mask
    (TileConfig, dict(entropy_min=math.nan), "entropy_min"),
    (TileConfig, dict(entropy_min=8.5), "entropy_min"),
    (TileConfig, dict(entropy_keep=2.0), "entropy_keep"),
    (TileConfig, dict(entropy_min=3.0, entropy_keep=0.3), "entropy_min"),
    (RunConfig, dict(method="best"), "method"),
    (RunConfig, dict(budget=-0.1), "budget"),
    (RunConfig, dict(budget_count=-1), "budget_count"),
    (RunConfig, dict(k=0), "k"),
    (RunConfig, dict(chunk=-5), "chunk"),
    (RunConfig, dict(seed=-1), "seed"),
    (RunConfig, dict(seed=2**32), "seed"),
    (RunConfig, dict(nir_view="both"), "nir_view"),
    (RunConfig, dict(dedup_cosine=0.0), "dedup_cosine"),
    (RunConfig, dict(dedup_cosine=1.01), "dedup_cosine"),
    (RunConfig, dict(dedup_cosine=math.nan), "dedup_cosine"),
    (RunConfig, dict(dedup_cosine=0.97, method="random"), "dedup_cosine"),
    (RunConfig, dict(max_per_place=0), "max_per_place"),
    (RunConfig, dict(max_per_place=2, method="water-filling"), "max_per_place"),
    (RunConfig, dict(max_per_place=1, place_iou=0.0), "place_iou"),
    (RunConfig, dict(place_iou=0.3), "place_iou"),  # without a place limit it would do nothing
]


@pytest.mark.parametrize("cls,kwargs,option", BAD, ids=[f"{c.__name__}-{o}" for c, _, o in BAD])
def test_bad_values_name_the_option(cls, kwargs, option):
    with pytest.raises(InvalidOption) as info:
        cls(**kwargs)
    assert info.value.option == option and isinstance(info.value, RSGeoPruneError)
    flag = "--" + option.replace("_", "-")
    assert info.value.with_flag(flag).startswith(f"{flag} {info.value.value!r}: ")


def test_defaults_are_valid_and_k_defaults_to_the_bank_or_200():
    assert TileConfig().tile_size == 256 and RunConfig().k is None
    assert RunConfig().k_or_default == DEFAULT_K == 200 and RunConfig(k=7).k_or_default == 7
    assert not TileConfig().wants_entropy and TileConfig(entropy_min=0.0).wants_entropy


def test_stage_counts_follow_the_pipeline_order():
    table = pd.DataFrame(
        {
            "kept": [True, False, False, False, False, False, True],
            "pruned_by": pd.array([None, "nodata", "mask", "entropy", "duplicate", "selection", None], "string"),
        }
    )
    assert list(pruned_counts(table)) == list(REASONS)
    assert stage_counts(table) == {
        "tiles": 7,
        "after nodata": 6,
        "after mask": 5,
        "after entropy": 4,
        "after duplicate": 3,
        "after selection": 2,
    }
    assert summary_line(table, reasons=("nodata",)) == "2 kept, 1 pruned by nodata"
    assert pruned_counts(table.iloc[:0]) == dict.fromkeys(REASONS, 0)
    assert np.isfinite(list(stage_counts(table).values())).all()


def test_copy_options_are_off_by_default_and_absent_from_the_config_record():
    """Runs without copy options keep the stage keys and catalog metadata they had before."""
    plain = RunConfig()
    assert not plain.removes_copies and set(plain.as_dict()) == {
        "budget",
        "budget_count",
        "k",
        "embedder",
        "nir_view",
        "method",
        "seed",
        "chunk",
        "export_tiles",
    }
    dedup = RunConfig(method="rs-prune-dedup")
    assert dedup.removes_copies and (dedup.effective_dedup_cosine, dedup.effective_max_per_place) == (0.97, 1)
    assert dedup.as_dict()["place_iou"] == 0.5 and "dedup_cosine" not in dedup.as_dict()
    only_cosine = RunConfig(dedup_cosine=0.9)
    assert (only_cosine.effective_dedup_cosine, only_cosine.effective_max_per_place) == (0.9, None)
    assert RunConfig(max_per_place=2, place_iou=0.3).as_dict()["place_iou"] == 0.3
