"""findings.py: the numbers and the claims, from runs held in memory (no files, no rendering)."""

import math
from pathlib import Path

import pytest

from rbwa.analysis.findings.core import Experiment, Run, compare
from rbwa.analysis.findings.summary import paper_batch_effect, summarise


def run(label: str, seed: int, accs: list[float], losses: list[float], status: str = "finished") -> Run:
    metrics = [{"epoch": e, "test_acc": a, "train_loss": None if e == 0 else losses[e - 1]}
               for e, a in enumerate(accs)]
    cfg = {"dataset": "cifar10", "model": "resnet18", "batch_size": 64}
    return Run(Path(f"{label}-{seed}"), "resnet18", label, seed, cfg, metrics, {"status": status})


def test_paper_batch_effect_from_table1():
    # gains 1.49, 1.75, 1.05 at 16-64 (mean 1.43) and 0.09, 0.18 at 128-256 (mean 0.135)
    assert paper_batch_effect() == pytest.approx(1.43 - 0.135)


def test_summary_rows_read_final_best_and_last_epochs_from_the_curves():
    # epoch 0 (before training) counts for "best" as the trainer's summary counts it, never for "final"
    sgd = [run("sgd", 0, [60, 40, 50], [0.9, 0.8]), run("sgd", 1, [10, 50, 54], [0.7, 0.6])]
    rbwa = [run("rbwa", 0, [60, 45, 53], [0.9, 0.5]), run("rbwa", 1, [10, 52, 58], [0.7, 0.4]),
            run("rbwa", 2, [10, 20, 30], [1.0, 1.0], status="diverged")]
    rows = {r["method"]: r for r in summarise(Experiment("fig3", "t", "model", "cpu", runs=sgd + rbwa))}
    assert rows["sgd"]["final_acc_mean"] == 52.0 and rows["sgd"]["best_acc_mean"] == 57.0  # (60 + 54) / 2
    assert rows["rbwa"]["n"] == 2 and rows["rbwa"]["diverged"] == 1
    assert rows["rbwa"]["final_acc_mean"] == 55.5 and rows["rbwa"]["final_loss_mean"] == pytest.approx(0.45)
    assert rows["rbwa"]["diff_vs_sgd"] == pytest.approx(3.5)  # paired: 53 - 50 and 58 - 54
    assert rows["rbwa"]["loss_gain_vs_sgd"] == pytest.approx(0.25)  # SGD - RBWA: 0.3 and 0.2
    # the last 5 epochs of a 2-epoch run are both epochs: (45 + 53) / 2 - (40 + 50) / 2 = 4, and 3
    assert rows["rbwa"]["last5_diff_vs_sgd"] == pytest.approx(3.5)
    assert rows["rbwa"]["paper_acc"] == 83.36 and rows["sgd"]["paper_acc"] == 81.98


def test_table1_rows_carry_the_papers_numbers_before_any_run_exists():
    # a run not yet started has no config; the paper's columns must not depend on whether one has
    unstarted = [Run(Path(f"{label}-0"), "128", label, 0, None, [], None) for label in ("sgd", "rbwa")]
    rows = {r["method"]: r for r in summarise(Experiment("table1", "t", "batch size", "cpu", runs=unstarted))}
    assert (rows["sgd"]["paper_acc"], rows["sgd"]["paper_loss"]) == (82.46, 0.00035)
    assert rows["rbwa"]["paper_acc"] == 82.55 and rows["rbwa"]["n"] == 0


def test_a_finding_pairs_seeds_and_signs_a_loss_claim():
    sgd = [run("sgd", 0, [10, 40, 50], [0.9, 0.8]), run("sgd", 1, [10, 50, 54], [0.7, 0.6])]
    rbwa = [run("rbwa", 0, [10, 45, 53], [0.9, 0.5]), run("rbwa", 1, [10, 52, 58], [0.7, 0.4])]
    acc = compare("c1", "RBWA - SGD", rbwa, sgd)
    assert acc.final == {0: 3.0, 1: 4.0} and acc.last == {0: 4.0, 1: 3.0}
    assert sorted(acc.curve) == [0, 0, 2, 3, 4, 5] and not acc.same
    loss = compare("c2", "SGD - RBWA", rbwa, sgd, "train_loss")
    assert loss.final == pytest.approx({0: 0.3, 1: 0.2}) and loss.tolerance == 1e-4 and loss.digits == 4


def test_a_finding_names_the_seeds_whose_two_runs_recorded_different_machines():
    def on(r: Run, cpu, threads) -> Run:
        r.summary = {"status": "finished", "versions": {"cpu": cpu, "torch_threads": threads}}
        return r

    curve = ([10, 50], [0.9])
    a = [on(run("rbwa", 0, *curve), "X", 1), on(run("rbwa", 1, *curve), "X", 2), on(run("rbwa", 2, *curve), "X", 1),
         on(run("rbwa", 3, *curve), None, 1)]
    b = [on(run("sgd", 0, *curve), "X", 1), on(run("sgd", 1, *curve), "X", 1), on(run("sgd", 2, *curve), "Y", 1),
         on(run("sgd", 3, *curve), None, 1)]
    # seed 3: neither run recorded its CPU (runs before rbwa recorded it), so nothing tells them apart
    assert compare("c", "w", a, b).machines == {1: "torch threads 2 against 1", 2: "CPU X against Y"}
    b[0].summary["versions"] = {"torch_threads": 4}  # a run that recorded no CPU against one that did
    assert compare("c", "w", a, b).machines[0] == "CPU X against not recorded, torch threads 1 against 4"


def test_choosing_on_the_other_seeds_never_uses_the_held_out_seeds_accuracy():
    from rbwa.analysis.findings.posthoc import choose_on_others

    accuracy = {0: {"a": 90.0, "b": 10.0}, 1: {"a": 50.0, "b": 60.0}, 2: {"a": 50.0, "b": 60.0}}
    # seed 0 alone would pick a; held out, it gets what seeds 1 and 2 prefer (b); they get the mean of the others
    assert choose_on_others(accuracy) == {0: "b", 1: "a", 2: "a"}


def test_a_tie_on_the_other_seeds_goes_to_the_lowest_value_and_only_common_candidates_compete():
    from rbwa.analysis.findings.posthoc import best_alone, choose_on_others

    # held out, seed 0 sees "LAWA 9" and "LAWA 10" tie at 80 (alphabetically "LAWA 10" would come first)
    accuracy = {0: {"LAWA 10": 1.0, "LAWA 9": 2.0, "extra": 99.0}, 1: {"LAWA 10": 80.0, "LAWA 9": 80.0},
                2: {"LAWA 10": 79.0, "LAWA 9": 81.0}}
    order = {"LAWA 10": (10.0,), "LAWA 9": (9.0,)}
    assert choose_on_others(accuracy, order)[0] == "LAWA 9"
    assert "extra" not in choose_on_others(accuracy, order).values()  # seeds 1 and 2 never evaluated it
    assert choose_on_others({0: {"a": 1.0}, 1: {"b": 2.0}}) == {}  # nothing in common: nothing chosen
    assert best_alone({"a": 79.92, "b": 79.92, "c": 79.0}) == ["a", "b"]


def _rows(*rows: tuple[str, float, float]) -> list[dict]:
    """posthoc.csv rows from (family, value, test accuracy), labelled as `rbwa posthoc` labels them."""
    label = {"swa": "SWA from epoch {:g}", "ema": "EMA, half-life {:g} steps", "wsm": "WSM linear, last {:g}",
             "lawa": "LAWA, last {:g} epoch ends"}
    return [{"family": f, "value": v, "label": label[f].format(v), "test_acc": a} for f, v, a in rows]


def test_a_tie_goes_by_family_then_value_whatever_the_order_of_the_rows_and_the_seeds():
    from rbwa.analysis.findings.posthoc import ANY, scores

    # held out, seed 0 sees SWA 2, EMA 100 and EMA 800 tie at 60 on seeds 1 and 2; seed 1's file lists EMA first
    # (`rbwa posthoc --half-lives 800 100` writes them in the order given)
    rows = {0: _rows(("swa", 2, 50), ("ema", 100, 50), ("ema", 800, 50)),
            1: _rows(("ema", 800, 60), ("ema", 100, 60), ("swa", 2, 60)),
            2: _rows(("swa", 2, 60), ("ema", 100, 60), ("ema", 800, 60))}
    for seeds in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        series = {s: (None, rows[s]) for s in seeds}
        assert scores(series, ANY, "test_acc")[1].picks[0] == "SWA from epoch 2"  # swa before ema
        assert scores(series, "ema", "test_acc")[1].picks[0] == "EMA, half-life 100 steps"  # the shorter half-life


def test_candidates_not_on_every_seed_are_named_and_left_out_of_the_optimism_and_a_nan_of_the_best():
    from rbwa.analysis.findings.posthoc import ANY, choose_candidates

    # seeds 0 and 1 ran with --families ... wsm, seed 2 without: WSM (seeds' own best at 70) cannot be chosen, so it
    # is no seed's "own best" either; seed 1's EMA is NaN. Held out: 0 -> SWA (60.5 > 55), 1 -> SWA, 2 -> SWA
    series = {0: (None, _rows(("swa", 2, 60), ("ema", 100, 55), ("wsm", 2, 70))),
              1: (None, _rows(("swa", 2, 61), ("ema", 100, math.nan), ("wsm", 2, 70))),
              2: (None, _rows(("swa", 2, 60), ("ema", 100, 59)))}
    out: list = []
    held = choose_candidates(series, ANY, "average (any family)", "here", out)
    assert held == {0: 60.0, 1: 61.0, 2: 60.0}
    assert out == ["here: post-hoc average (any family), chosen on the other seeds: seed 0: SWA from epoch 2 "
                   "(60.00%); seed 1: SWA from epoch 2 (61.00%); seed 2: SWA from epoch 2 (60.00%); the best on each "
                   "seed alone: seed 0: SWA from epoch 2; seed 1: SWA from epoch 2; seed 2: SWA from epoch 2 (the "
                   "same on every seed); the leave-one-out optimism (a seed's own best beyond the choice made on the "
                   "others) 0.00 points on average, 0.00 at most; 1 candidate not on every seed left out of the "
                   "choice and of each seed's best (of wsm)"]
    # a family one seed never ran: said, and nothing chosen
    out = []
    assert choose_candidates(series, "wsm", "WSM window", "here", out) is None
    assert out == ["here: seed 2 has no post-hoc WSM window candidate (`rbwa posthoc` ran with other --families), "
                   "so none is chosen; rerun it on every seed with the same families."]


def test_a_choice_with_no_number_on_its_held_out_seed_leaves_that_seed_and_says_so():
    from rbwa.analysis.findings.posthoc import ANY, choose_candidates

    # held out, seed 0 gets SWA (60.5 against EMA's 55.5), which scored NaN there; seeds 1 and 2 get the EMA (SWA
    # failed on seed 0, one of their others): 55 and 56, where their own bests are 61 and 60 (optimism 6 and 4)
    series = {0: (None, _rows(("swa", 2, math.nan), ("ema", 100, 50))),
              1: (None, _rows(("swa", 2, 61), ("ema", 100, 55))),
              2: (None, _rows(("swa", 2, 60), ("ema", 100, 56)))}
    out: list = []
    assert choose_candidates(series, ANY, "average (any family)", "here", out) == {1: 55.0, 2: 56.0}
    assert out[0].startswith("here: post-hoc average (any family), chosen on the other seeds: seed 0: SWA from epoch "
                             "2 (no number); seed 1: EMA, half-life 100 steps (55.00%); seed 2: EMA, half-life 100 "
                             "steps (56.00%); the best on each seed alone: seed 0: EMA, half-life 100 steps; ")
    assert out[0].endswith("5.00 points on average, 6.00 at most; the choice scored no number on seed 0: left out of "
                           "the optimism and of its comparisons")


def test_a_finding_names_pairs_trained_at_different_commits_and_the_dataset_by_its_name():
    from rbwa.analysis.findings.core import dataset_name

    def at(r: Run, git) -> Run:
        r.summary = {"status": "finished", "versions": {"git": git}}
        return r

    curve = ([10, 50], [0.9])
    a = [at(run("rbwa", 0, *curve), "aaa"), at(run("rbwa", 1, *curve), "bbb")]
    b = [at(run("sgd", 0, *curve), "aaa"), at(run("sgd", 1, *curve), "ccc")]
    assert compare("c", "w", a, b).commits == {1: "bbb against ccc"}
    assert [dataset_name({"dataset": d}) for d in ("cifar10", "cifar100", "folder:cifar10-jpeg (50000 train + ...)",
                                                   "folder:cifar-100-png (...)", "digits")] == [
        "CIFAR-10", "CIFAR-100", "CIFAR-10", "CIFAR-100", "digits"]


def test_an_identity_is_the_largest_gap_in_test_items_against_one_in_ten_thousand():
    from rbwa.analysis.findings.core import equivalence, identity_claim, twin_of

    assert twin_of("sgd (harmonic LR, = rbwa)") == "rbwa" and twin_of("sgd (rbwa-e's LR, = rbwa-e)") == "rbwa-e"
    assert twin_of("sgd (cosine LR)") is None and twin_of("rbwa") is None
    assert identity_claim("adamw (harmonic LR, = rbwa)") == "rbwa = adamw on the harmonic LR"

    def gpt(label: str, seed: int, accs: list[float], losses: list[float]) -> Run:
        metrics = [{"epoch": e, "test_acc": a, "test_loss": loss} for e, (a, loss) in enumerate(zip(accs, losses))]
        return Run(Path(f"{label}-{seed}"), "gpt", label, seed, {"model": "gpt"}, metrics,
                   {"status": "finished", "test_size": 111_488})

    one = 100 / 111_488  # one validation character, in accuracy points
    rbwa = [gpt("rbwa", s, [10.0, 40.0 + s], [2.0, 1.5]) for s in range(2)]
    twin = [gpt("twin", 0, [10.0, 40.0 + 3 * one], [2.0, 1.5 + 2e-6]), gpt("twin", 1, [10.0, 41.0], [2.0, 1.5])]
    q = equivalence("rbwa = adamw on the harmonic LR", rbwa, twin)
    assert (q.seeds, q.items, q.item_gap, q.item_tolerance, q.kind) == (2, 111_488, 3, 11, "validation characters")
    assert q.loss_gap == pytest.approx(2e-6) and q.holds
    twin[1] = gpt("twin", 1, [10.0, 41.0 + 12 * one], [2.0, 1.5])  # 12 characters apart: beyond 11
    assert equivalence("c", rbwa, twin).item_gap == 12 and not equivalence("c", rbwa, twin).holds
    assert equivalence("c", rbwa, []) is None  # no pair: nothing to judge
