"""Methods tuned with the same budget: each setting chosen on the other seeds, scored on the held-out one."""

import csv
import math
import re
from pathlib import Path

import pytest

from rbwa.analysis.findings.core import Experiment, Finding, Run
from rbwa.analysis.findings.tuned import complete, lr_sweep, setting, tune, tuned_claims
from rbwa.analysis.stats import mean_ci


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
    assert tune(tie).picks == {0: "a", 1: "a"} and tune(tie, {"a": (2.0,), "b": (1.0,)}).picks == {0: "b", 1: "b"}


def test_a_setting_names_the_peak_lr_and_wsds_decay():
    assert setting({"lr": 0.001, "lr_schedule": "cosine"}) == "lr 0.001"
    assert setting({"lr": 5e-4, "lr_schedule": "wsd", "decay_fraction": 0.2}) == "lr 0.0005, decay 0.2"


def fake_run(root: Path, seed: int, schedule: str, lr: float, loss: float, candidates: dict[str, float] | None = None,
             decay: float = 0.2) -> Run:
    """A finished run whose final validation loss is ``loss``; a constant-LR one with post-hoc rows: its final
    weights (the last snapshot alone, = ``loss``) and the ``candidates`` (label -> loss; "WSM ..." are wsm, "EMA ..."
    ema, the rest swa; the value is the label's first number)."""
    cfg = {"lr": lr, "lr_schedule": schedule, "decay_fraction": decay, "model": "gpt"}
    path = root / f"{schedule}-{lr}-{decay}-{seed}"
    if candidates is not None:
        (path / "posthoc").mkdir(parents=True)
        rows = [("lawa", 1, "LAWA, last 1 epoch ends", loss, 1)] + [
            ({"WSM": "wsm", "EMA": "ema"}.get(c[:3], "swa"), float(re.findall(r"[\d.]+", c)[0]), c, v, 4)
            for c, v in candidates.items()]
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
    assert (f"beyond the choice made on the others) {(0.04 + 0.04 + 0.11) / 3:.4f} nats on average, 0.1100 at most"
            in avg)
    assert all(not math.isnan(f.final[s]) for f in findings.values() for s in f.final)
    # a seed whose cosine run at 2e-3 has not finished waits for cosine, and only for cosine
    runs.append(Run(tmp_path / "unfinished", "gpt", "cosine, lr 0.002", 3, {"lr": 2e-3, "lr_schedule": "cosine"},
                    [], None))
    runs.append(fake_run(tmp_path, 3, "cosine", 1e-3, 1.0))
    out = tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    line = next(x for x in out if isinstance(x, str) and ": cosine: chosen " in x)
    assert line.endswith("seed 3 still lacks a finished run of the grid (or its post-hoc rows) and waits")
    again = next(f for f in out if isinstance(f, Finding) and f.what == "cosine - WSD")
    assert again.final == findings["cosine - WSD"].final


def test_a_nan_loss_is_the_worst_whatever_the_order_of_the_settings():
    # a NaN mean once won or emptied the choice depending on the set's order (the process's hash seed)
    for names in (["a", "b", "c"], ["c", "b", "a"]):
        losses = {s: {n: {"a": math.nan, "b": 1.0 + s / 100, "c": 1.1}[n] for n in names} for s in range(3)}
        t = tune(losses)
        assert t.picks == {0: "b", 1: "b", 2: "b"} and t.held == {0: 1.0, 1: 1.01, 2: 1.02}
    t = tune({0: {"a": 1.0, "b": 2.0}, 1: {"a": math.nan, "b": 2.0}, 2: {"a": 1.0, "b": 2.0}})
    # held out 1: a's mean on 0 and 2 is 1.0 -> a, which scored no number there: that seed's choice failed
    assert t.picks[1] == "a" and t.failed == [1] and set(t.optimism) == {0, 2}


def _lines(out: list) -> dict[str, str]:
    return {line.split(": ")[1]: line for line in out if isinstance(line, str) and line.startswith("A GPT")}


def test_a_diverged_run_is_a_failed_setting_not_a_seed_that_waits(tmp_path):
    runs = [fake_run(tmp_path, s, "cosine", lr, loss + s / 100)
            for s in range(3) for lr, loss in ((1e-3, 1.60), (2e-3, 1.55))]
    runs += [fake_run(tmp_path, s, "wsd", 1e-3, 1.50 + s / 100) for s in range(3)]
    diverged = fake_run(tmp_path, 2, "cosine", 4e-3, 9.0)
    runs += [fake_run(tmp_path, s, "cosine", 4e-3, 1.52) for s in (0, 1)]
    runs.append(Run(diverged.path, "gpt", "cosine, lr 0.004", 2, diverged.config, [], {"status": "diverged"}))
    out = tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    line = _lines(out)["cosine"]
    # held out 0 or 1: 4e-3's mean over the others holds seed 2's failure -> 2e-3; held out 2: 4e-3 (1.52 on both)
    assert "chosen lr 0.002 (seeds 0, 1), lr 0.004 (seed 2)" in line and "wait" not in line
    assert "the choice diverged on seed 2" in line and "seed 2: diverged;" in line and "inf" not in line
    # the question pairs seeds 0 and 1 only, and says why seed 2 is out
    finding = next(f for f in out if isinstance(f, Finding) and f.what == "cosine - WSD")
    assert finding.final == pytest.approx({0: 0.05, 1: 0.05})
    assert any(isinstance(x, str) and x.endswith("On seed 2 a tuned choice diverged: left out of the paired "
                                                 "difference (the method lines name whose)") for x in out)


def test_every_seed_owed_a_run_is_named_and_an_untuned_method_says_its_questions_wait(tmp_path):
    runs = [fake_run(tmp_path, s, "cosine", 1e-3, 1.6) for s in range(3)]
    runs += [fake_run(tmp_path, s, "constant", 1e-3, 1.7, {"SWA from epoch 1": 1.5 + s / 100}) for s in (0, 1)]
    # seed 2's constant-LR run is still training (no summary): every constant-LR method waits for it
    runs.append(Run(tmp_path / "training", "gpt", "constant, lr 0.001", 2, {"lr": 1e-3, "lr_schedule": "constant"},
                    [], None))
    runs += [fake_run(tmp_path, 0, "wsd", 1e-3, 1.5),
             Run(tmp_path / "w1", "gpt", "wsd", 1, {"lr": 1e-3, "lr_schedule": "wsd", "decay_fraction": 0.2}, [],
                 None)]
    out = tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    lines = _lines(out)
    for method in ("constant LR, final weights", "an average (any family)"):
        assert "seed 2 still lacks a finished run of the grid (or its post-hoc rows) and waits" in lines[method]
    assert lines["WSD"] == ("A GPT on text, every method tuned on the other seeds: WSD: not tuned yet, fewer than 2 "
                            "seeds hold every run of its grid; seed 1 still lacks a finished run of the grid (or its "
                            "post-hoc rows) and waits; its questions wait")
    assert not any(isinstance(f, Finding) and "WSD" in f.what for f in out)


def test_a_candidate_that_one_seed_lacks_is_named_as_left_out(tmp_path):
    # seed 2's posthoc ran without the family of "WSM linear, last 4": it competes nowhere, and the line says so
    runs = [fake_run(tmp_path, s, "constant", 1e-3, 1.7,
                     {"SWA from epoch 1": 1.6, **({"WSM linear, last 4": 1.5} if s < 2 else {})}) for s in range(3)]
    line = _lines(tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs)))["an average (any family)"]
    assert "chosen lr 0.001: SWA from epoch 1 (seeds 0, 1, 2)" in line
    assert "settings not on every seed, left out of the choice: seed 0: 1, seed 1: 1" in line


def test_the_lr_sweep_is_what_each_choice_picks_from(tmp_path):
    runs = [fake_run(tmp_path, s, "cosine", lr, loss + s / 100)
            for s in (0, 1) for lr, loss in ((1e-3, 1.6), (2e-3, 1.5))]
    runs += [fake_run(tmp_path, s, "wsd", 1e-3, 1.4, decay=d) for s in (0, 1) for d in (0.2, 0.1)]
    # constant LR at 1e-3: SWA is lowest on seed 0, WSM on seed 1; so each seed's average there is the other's pick
    runs += [fake_run(tmp_path, s, "constant", 1e-3, 1.7, {"SWA from epoch 1": (1.50, 1.60)[s],
                                                          "WSM linear, last 4": (1.55, 1.52)[s]}) for s in (0, 1)]
    sweep = lr_sweep(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    assert sweep["cosine"] == {1e-3: {0: 1.6, 1: 1.61}, 2e-3: {0: 1.5, 1: 1.51}}
    assert sweep["WSD, decay 0.2"] == {1e-3: {0: 1.4, 1: 1.4}} and sweep["WSD, decay 0.1"] == {1e-3: {0: 1.4, 1: 1.4}}
    assert sweep["constant LR, final weights"] == {1e-3: {0: 1.7, 1: 1.7}}
    # held out 0: seed 1 prefers WSM (1.52) -> seed 0's WSM 1.55; held out 1: seed 0 prefers SWA -> seed 1's 1.60
    assert sweep["an average (any family)"] == {1e-3: {0: 1.55, 1: 1.60}}
    assert sweep["WSM"] == {1e-3: {0: 1.55, 1: 1.52}}


def test_a_setting_that_failed_on_fewer_other_seeds_wins_then_the_lower_mean_of_the_rest():
    # seed 1 diverged at every setting: held out 0, both fail once among the others -> seed 2 decides (b, not the
    # label order's a)
    t = tune({0: {"a": 1.2, "b": 1.0}, 1: {"a": math.inf, "b": math.inf}, 2: {"a": 1.3, "b": 1.1}})
    assert t.picks == {0: "b", 1: "b", 2: "b"} and t.failed == [1]
    # a setting that never failed beats one that failed on another seed, however low its other scores
    t = tune({0: {"a": math.inf, "b": 1.5}, 1: {"a": 1.0, "b": 1.6}, 2: {"a": 1.0, "b": 1.6}})
    assert t.picks == {0: "a", 1: "b", 2: "b"}
    assert math.isnan(mean_ci(list(tune({0: {"a": 1.0}, 1: {"a": math.inf}}).optimism.values()))[1])


def test_a_pair_left_with_one_seed_is_not_tested_and_a_diverged_choice_leaves_the_optimism(tmp_path):
    runs = [fake_run(tmp_path, s, "cosine", 1e-3, 1.6 + s / 100) for s in (0, 1)]
    runs += [fake_run(tmp_path, 0, "wsd", 1e-3, 1.5)]
    failed = fake_run(tmp_path, 1, "wsd", 1e-3, 9.0)
    runs.append(Run(failed.path, "gpt", "wsd", 1, failed.config, [], {"status": "diverged"}))
    out = tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
    assert _lines(out)["WSD"].endswith("seed 0: 1.5000; seed 1: diverged; the leave-one-out optimism (a seed's own "
                                       "best beyond the choice made on the others) 0.0000 nats on average, 0.0000 "
                                       "at most; the choice diverged on seed 1 (its loss the worst; out of the "
                                       "optimism)")
    assert any(isinstance(x, str) and x.endswith("Fewer than 2 seeds pair the two tuned choices: not tested")
               for x in out)
    assert not any(isinstance(f, Finding) for f in out)


def test_a_tie_in_the_tuned_choice_goes_to_the_earlier_family_then_the_lower_value_not_the_label(tmp_path):
    # on every seed "SWA from epoch 9" and "SWA from epoch 10" tie (the same weights, say), and so do an EMA and the
    # SWA from epoch 9 at another rate: by label "EMA ..." and "... epoch 10" would win
    runs = []
    for seed in range(3):
        runs.append(fake_run(tmp_path, seed, "constant", 1e-3, 1.9,
                             {"SWA from epoch 10": 1.5, "SWA from epoch 9": 1.5, "EMA, half-life 5 steps": 1.5}))
    line = next(x for x in tuned_claims(Experiment("lm-tuned", "t", "model", "cpu-lm", runs=runs))
                if isinstance(x, str) and ": an average (any family): " in x)
    assert "chosen lr 0.001: SWA from epoch 9 (seeds 0, 1, 2)" in line
