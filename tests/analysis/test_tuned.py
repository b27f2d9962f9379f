"""Methods tuned with the same budget: each setting chosen on the other seeds, scored on the held-out one."""

import csv
import math
from pathlib import Path

import pytest

from rbwa.analysis.findings.core import Experiment, Finding, Run
from rbwa.analysis.findings.tuned import complete, setting, tune, tuned_claims


def test_each_seed_gets_the_setting_lowest_on_the_others_and_its_optimism():
    losses = {0: {"a": 1.0, "b": 2.0}, 1: {"a": 1.5, "b": 1.0}, 2: {"a": 1.2, "b": 1.3}}
    t = tune(losses)
    # held out 0: a 1.35, b 1.15 -> b; held out 1: a 1.1, b 1.65 -> a; held out 2: a 1.25, b 1.5 -> a
    assert t.picks == {0: "b", 1: "a", 2: "a"}
    assert t.held == {0: 2.0, 1: 1.5, 2: 1.2} and t.best == {0: 1.0, 1: 1.0, 2: 1.2}
    assert t.optimism == {0: 1.0, 1: 0.5, 2: 0.0}


def test_a_seed_missing_a_run_of_the_grid_waits_and_ties_go_to_the_order():
    # seed 2 has not run "lr 2" yet: it waits (else the others' choice would shrink to "lr 1"); an extra setting
    # that one seed holds (a candidate the others' grid lacks) stops no one: the common ones compete
    by_seed = {0: {"lr 1: a": 1.0, "lr 2: a": 0.5}, 1: {"lr 1: a": 1.0, "lr 2: a": 0.5, "lr 2: b": 0.1},
               2: {"lr 1: a": 0.1}}
    ready, waiting = complete(by_seed, {"lr 1", "lr 2"})
    assert waiting == [2] and tune(ready).picks == {0: "lr 2: a", 1: "lr 2: a"}
    assert tune({0: {"a": 1.0, "b": 0.5}}) is None  # one seed: nothing to choose on
    tie = {0: {"a": 1.0, "b": 1.0}, 1: {"a": 1.0, "b": 1.0}}
    assert tune(tie).picks == {0: "a", 1: "a"} and tune(tie, {"a": 2.0, "b": 1.0}).picks == {0: "b", 1: "b"}


def test_a_setting_names_the_peak_lr_and_wsds_decay():
    assert setting({"lr": 0.001, "lr_schedule": "cosine"}) == "lr 0.001"
    assert setting({"lr": 5e-4, "lr_schedule": "wsd", "decay_fraction": 0.2}) == "lr 0.0005, decay 0.2"


def fake_run(root: Path, seed: int, schedule: str, lr: float, loss: float, candidates: dict[str, float] | None = None,
             decay: float = 0.2) -> Run:
    """A finished run whose final validation loss is ``loss``; a constant-LR one with post-hoc rows: its final
    weights (the last snapshot alone, = ``loss``) and the ``candidates`` (label -> loss; "WSM ..." are wsm)."""
    cfg = {"lr": lr, "lr_schedule": schedule, "decay_fraction": decay, "model": "gpt"}
    path = root / f"{schedule}-{lr}-{decay}-{seed}"
    if candidates is not None:
        (path / "posthoc").mkdir(parents=True)
        rows = [("lawa", 1, "LAWA, last 1 epoch ends", loss, 1)] + [
            ("wsm" if c.startswith("WSM") else "swa", 0, c, v, 4) for c, v in candidates.items()]
        with open(path / "posthoc" / "posthoc.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["family", "value", "label", "test_acc", "test_loss", "snapshots", "first_step", "last_step",
                        "bn_images"])
            for family, value, label, v, n in rows:
                w.writerow([family, value, label, 50.0, v, n, 1, 100, 0])
    metrics = [{"epoch": 1, "test_loss": loss}]
    return Run(path, "gpt", f"{schedule}, lr {lr}", seed, cfg, metrics, {"status": "finished"})


def test_the_claims_compare_each_methods_held_out_choice_by_seed(tmp_path):
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):
        for lr, cosine, wsd in ((1e-3, 1.60, 1.55), (2e-3, 1.58, 1.56)):
            runs.append(fake_run(tmp_path, seed, "cosine", lr, cosine + shift))
            runs.append(fake_run(tmp_path, seed, "wsd", lr, wsd + shift))
        # constant LR: at 1e-3 an SWA that beats everything on seeds 0 and 1; at 2e-3 a WSM that is second
        runs.append(fake_run(tmp_path, seed, "constant", 1e-3, 1.70 + shift,
                             {"SWA from epoch 1": (1.50 if seed < 2 else 1.65) + shift, "WSM linear, last 4": 1.62}))
        runs.append(fake_run(tmp_path, seed, "constant", 2e-3, 1.68 + shift,
                             {"SWA from epoch 1": 1.60 + shift, "WSM linear, last 4": 1.54 + shift}))
    out = tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    findings = {f.what: f for f in out if isinstance(f, Finding)}
    # cosine: 2e-3 lowest on every pair of seeds -> 1.58 + shift; WSD: 1e-3 -> 1.55 + shift
    # any average: held out 0 -> mean over seeds 1, 2 of "lr 0.001: SWA" = (1.51 + 1.64) / 2 = 1.575 against
    # "lr 0.002: WSM" (1.55 + 1.53) / 2 = 1.54 -> WSM 1.54; held out 1 -> SWA (1.50 + 1.64) / 2 = 1.57 against
    # WSM (1.54 + 1.53) / 2 = 1.535 -> WSM 1.55; held out 2 -> SWA (1.50 + 1.51) / 2 = 1.505 -> SWA 1.64
    cos = findings["cosine - an average (any family)"].final
    assert cos == pytest.approx({0: 1.58 - 1.54, 1: 1.59 - 1.55, 2: 1.57 - 1.64})
    assert findings["WSD - WSM"].final == pytest.approx({0: 1.55 - 1.54, 1: 1.56 - 1.55, 2: 1.54 - 1.53})
    assert findings["cosine - WSD"].final == pytest.approx({0: 0.03, 1: 0.03, 2: 0.03})
    lines = [line for line in out if isinstance(line, str)]
    avg = next(line for line in lines if ": an average (any family): chosen " in line)
    assert "lr 0.002: WSM linear, last 4 (seeds 0, 1), lr 0.001: SWA from epoch 1 (seed 2)" in avg
    # optimism: seed 2's own best is its WSM 1.53 against the SWA 1.64 chosen for it: 0.11; seeds 0 and 1: their
    # SWA at 1e-3 (1.50, 1.51) against the WSM chosen (1.54, 1.55): 0.04 each
    assert f"below the choice made on the others) {(0.04 + 0.04 + 0.11) / 3:.4f} nats on average" in avg
    assert all(not math.isnan(f.final[s]) for f in findings.values() for s in f.final)
    # a seed whose cosine run at 2e-3 has not finished waits for cosine, and only for cosine
    runs.append(Run(tmp_path / "unfinished", "gpt", "cosine, lr 0.002", 3, {"lr": 2e-3, "lr_schedule": "cosine"},
                    [], None))
    runs.append(fake_run(tmp_path, 3, "cosine", 1e-3, 1.0))
    out = tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    line = next(x for x in out if isinstance(x, str) and ": cosine: chosen " in x)
    assert line.endswith("seed 3 still lacks a run of the grid (unfinished, diverged or without post-hoc rows) "
                         "and waits")
    again = next(f for f in out if isinstance(f, Finding) and f.what == "cosine - WSD")
    assert again.final == findings["cosine - WSD"].final
