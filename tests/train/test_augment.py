"""Radiometric jitter: identity when off, a pure function of (seed, step), nodata untouched, ranges held."""

from __future__ import annotations

import math

import pytest
import torch

from rsgeo_prune.train.augment import RadiometricJitter


def _batch(n=6, c=4, h=16, w=16):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, h, w, generator=g) * 1.6 - 0.8
    valid = torch.ones(n, h, w, dtype=torch.bool)
    valid[:, :3, :5] = False
    x[:, :, :3, :5] = -1.0  # nodata at the fill value
    return x, valid


def test_off_is_the_identity():
    x, valid = _batch()
    assert RadiometricJitter()(x, valid, seed=0, step=3) is x
    assert not RadiometricJitter().active and RadiometricJitter(gamma=0.1).active


def test_same_seed_and_step_give_the_same_jitter_and_others_differ():
    x, valid = _batch()
    j = RadiometricJitter(gain=0.2, offset=0.05, gamma=0.3)
    a = j(x, valid, seed=1, step=7)
    assert torch.equal(a, j(x.clone(), valid, seed=1, step=7))
    assert not torch.equal(a, j(x, valid, seed=1, step=8)) and not torch.equal(a, j(x, valid, seed=2, step=7))


def test_nodata_pixels_keep_their_fill_and_values_stay_in_range():
    x, valid = _batch()
    y = RadiometricJitter(gain=0.5, offset=0.2, gamma=0.5)(x, valid, seed=0, step=0, fill=-1.0)
    assert torch.all(y[:, :, :3, :5] == -1.0)
    assert y.min() >= -1 and y.max() <= 1 and y.dtype == x.dtype and y.shape == x.shape


def test_gain_alone_scales_each_band_within_its_range():
    x, valid = _batch()
    j = RadiometricJitter(gain=0.25)
    y = j(x, valid, seed=3, step=0)
    gain, offset, gamma = j.draw(x.shape[0], x.shape[1], 3, 0)
    assert torch.all(offset == 0) and torch.all(gamma == 1)
    assert gain.min() >= 1 / 1.25 - 1e-6 and gain.max() <= 1.25 + 1e-6
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    inside = valid.unsqueeze(1) & (x01 * gain < 1)  # where the clip did not bite
    torch.testing.assert_close(y01[inside.expand_as(y01)], (x01 * gain)[inside.expand_as(x01)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf])
def test_bad_strengths_are_refused(bad):
    with pytest.raises(ValueError, match="jitter gamma"):
        RadiometricJitter(gamma=bad)
