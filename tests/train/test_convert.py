"""The wing's repeated conversions, each with known answers: uint8 levels, band views, latent scale, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from rsgeo_prune.train.convert import (
    band_views,
    denormalise_latents,
    json_safe,
    normalise_latents,
    scale_tensors,
    to_levels,
)


def test_every_uint8_level_survives_the_model_range_and_back():
    u = np.arange(256, dtype=np.uint8)
    x = torch.from_numpy(u.astype(np.float32) / 127.5 - 1)  # how the datasets scale uint8 files
    assert np.array_equal(to_levels(x), u) and to_levels(x).dtype == np.uint8
    assert to_levels(np.array([-3.0, -1.0, 0.0, 1.0, 2.5])).tolist() == [0, 0, 128, 255, 255]  # clipped; 127.5 → 128


def test_band_views_fit_the_band_count():
    assert band_views(4) == {"rgb": (0, 1, 2), "nirrg": (3, 0, 1)}
    assert band_views(3) == {"rgb": (0, 1, 2)}
    assert band_views(1) == {"gray": (0, 0, 0)}


def test_latent_scale_round_trips():
    mean, std = scale_tensors([0.5, -1.0], [2.0, 0.25])
    assert mean.shape == std.shape == (1, 2, 1, 1) and mean.dtype == torch.float32
    z = torch.tensor([[[[2.5]], [[-0.5]]]])
    x = normalise_latents(z, mean, std)
    assert x.flatten().tolist() == [1.0, 2.0]
    assert torch.equal(denormalise_latents(x, mean, std), z)


def test_json_safe_makes_plain_json():
    record = {"loss": torch.tensor(0.25), "v": np.float32(1.5), "grid": np.arange(3), (1, 2): (math.nan, math.inf)}
    assert json.loads(json.dumps(json_safe(record))) == {
        "loss": 0.25,
        "v": 1.5,
        "grid": [0, 1, 2],
        "(1, 2)": [None, None],
    }
