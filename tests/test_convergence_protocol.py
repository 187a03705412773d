"""The convergence benchmark's decision rule, paired differences, steps-to-goal and --check, on made-up
runs with known answers (the experiment itself is a benchmark, not a test)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence.py"
_spec = importlib.util.spec_from_file_location("convergence_benchmark", _PATH)
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)

SEEDS = (0, 1, 2)
STEPS = (500, 1000, 2000, 3000)
METHODS = ["full", "random", "entropy", "cluster-nearest", "rs-prune", "stage1+random", "oracle-clean"]


def _p():
    return dict(seeds=SEEDS, checkpoints=STEPS, methods=METHODS, eval_controls=["full-filtered"])


def _runs(final: dict, rare: dict | None = None, jitter: float = 0.01) -> dict:
    """FD falls linearly to ``final[method]`` (+ a per-seed offset) in every space and reference."""
    runs = {}
    for m, goal in final.items():
        for s in SEEDS:
            cks = {}
            for k, step in enumerate(STEPS):
                fd = goal + (len(STEPS) - 1 - k) * 0.5 + jitter * s
                sc = {
                    "fd": fd,
                    "precision": 0.5,
                    "recall": 0.5,
                    "class_recall": {"solar_farm": (rare or {}).get(m, 0.5)},
                }
                cks[str(step)] = {"scores": {sp: {r: dict(sc) for r in ("target", "raw")} for sp in conv.SPACES}}
            runs[f"{m}/{s}"] = {
                "checkpoints": cks,
                "filtered": {k: copy.deepcopy(v) for k, v in cks.items()} if m == "full" else {},
            }
    return runs


def _verdict(final, rare=None):
    p = _p()
    runs = _runs(final, rare)
    return conv.verdict(runs, conv.summarise(runs, p, ["target", "raw"]), p)


def test_a_clear_win_over_every_baseline_and_the_stage1_control_supports_the_claim():
    final = dict(
        full=1.0,
        random=1.0,
        entropy=1.0,
        **{"cluster-nearest": 1.0, "rs-prune": 0.5, "stage1+random": 0.9, "oracle-clean": 0.8},
    )
    v = _verdict(final)
    assert v["verdict"] == "SUPPORTED" and v["stage2"].startswith("Stage II helps")
    assert v["paired_vs"]["full"]["a_better_in"] == 3 and v["paired_vs"]["full"]["mean"] == pytest.approx(-0.5)


def test_no_gain_over_full_refutes_it():
    final = dict(
        full=0.5,
        random=1.0,
        entropy=1.0,
        **{"cluster-nearest": 1.0, "rs-prune": 0.7, "stage1+random": 0.7, "oracle-clean": 0.7},
    )
    assert _verdict(final)["verdict"].startswith("REFUTED (rs-prune does not beat full")


def test_a_gain_that_stage1_plus_random_matches_is_junk_removal():
    final = dict(
        full=1.0,
        random=1.0,
        entropy=1.0,
        **{"cluster-nearest": 1.0, "rs-prune": 0.5, "stage1+random": 0.5, "oracle-clean": 0.5},
    )
    v = _verdict(final)
    assert v["verdict"].startswith("REFUTED (the gain over full is Stage I")
    assert v["stage2"].startswith("Stage II adds nothing measurable")


def test_losing_the_rare_class_keeps_a_win_from_supporting_the_claim():
    final = dict(
        full=1.0,
        random=1.0,
        entropy=1.0,
        **{"cluster-nearest": 1.0, "rs-prune": 0.5, "stage1+random": 0.9, "oracle-clean": 0.8},
    )
    v = _verdict(final, rare={"rs-prune": 0.1, "full": 0.6})
    assert v["verdict"] == "INCONCLUSIVE" and v["rare_recall"] == pytest.approx({"rs-prune": 0.1, "full": 0.6})


def test_steps_to_reach_interpolates_between_checkpoints_and_says_when_never():
    p = _p()
    runs = _runs(dict(full=1.0, **{"rs-prune": 0.0}), jitter=0.0)
    p["methods"] = ["full", "rs-prune"]
    table = conv.summarise(runs, p, ["target"])
    # rs-prune: FD 1.5, 1.0, 0.5, 0.0 at 500..3000: reaches full's final 1.0 exactly at 1000
    assert conv.steps_to_reach(table, p, "rs-prune", 1.0) == pytest.approx(1000.0)
    assert conv.steps_to_reach(table, p, "rs-prune", 0.75) == pytest.approx(1500.0)
    assert conv.steps_to_reach(table, p, "full", 0.2) is None


def test_check_compares_paired_differences_and_the_verdict():
    p = _p()
    final = dict(
        full=1.0,
        random=1.0,
        entropy=1.0,
        **{"cluster-nearest": 1.0, "rs-prune": 0.5, "stage1+random": 0.9, "oracle-clean": 0.8},
    )
    runs = _runs(final)
    table = conv.summarise(runs, p, ["target", "raw"])
    res = dict(
        protocol=p,
        protocol_digest="x",
        refs=["target", "raw"],
        paired_full=conv.paired_full(runs, p, ["target", "raw"]),
        noise={s: {"target": 0.01, "raw": 0.01} for s in conv.SPACES},
        verdict=conv.verdict(runs, table, p),
    )
    assert conv.check(res, copy.deepcopy(res))
    # every absolute FD shifted together (another CPU's VAE): paired differences and verdict unchanged
    shifted = _runs({m: v + 0.3 for m, v in final.items()})
    res2 = dict(
        res,
        paired_full=conv.paired_full(shifted, p, ["target", "raw"]),
        verdict=conv.verdict(shifted, conv.summarise(shifted, p, ["target", "raw"]), p),
    )
    assert conv.check(res2, res)
    # rs-prune's advantage gone: outside the tolerance and another verdict
    worse = _runs(dict(final, **{"rs-prune": 1.2}))
    res3 = dict(
        res,
        paired_full=conv.paired_full(worse, p, ["target", "raw"]),
        verdict=conv.verdict(worse, conv.summarise(worse, p, ["target", "raw"]), p),
    )
    assert not conv.check(res3, res)
