import csv
import json
import re
from pathlib import Path

import pytest

from rbwa.analysis.report import write_report
from rbwa.errors import UserError


def make_run(root: Path, name: str, *, model="resnet18", batch=64, accs=(40.0, 50.0), loss=0.5, status="finished"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    cfg = {"dataset": "cifar10", "model": model, "batch_size": batch, "epochs": len(accs) - 1, "start_epoch": 1,
           "width": 0.125, "train_subset": 500, "test_subset": 100, "subset_seed": 0, "augment": "none", "lr": 0.05,
           "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "constant"}
    (run / "config.json").write_text(json.dumps(cfg))
    metrics = [{"epoch": e, "train_loss": None if e == 0 else loss * (len(accs) - e), "train_acc": None,
                "test_loss": 1.0, "test_acc": a, "lr": 0.05, "seconds": 1.0} for e, a in enumerate(accs)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if status:
        summary = {"status": status, "final_test_acc": accs[-1], "best_test_acc": max(accs), "final_train_loss": loss,
                   "mean_epoch_seconds": 1.0, "versions": {"torch": "x"}, "device": "cpu"}
        (run / "summary.json").write_text(json.dumps(summary))
    return f"runs/{name}"


def make_sweep(root: Path, gains: dict[str, list[float]], experiment="fig3", setting="model") -> None:
    """RBWA and SGD runs per model with known paired gains; SGD's final accuracies are 50, 51, 52."""
    entries = []
    for model, model_gains in gains.items():
        for seed, gain in enumerate(model_gains):
            sgd_acc = 50.0 + seed
            entries.append({"run": make_run(root, f"{model}-sgd-{seed}", model=model, accs=(10, sgd_acc), loss=0.4),
                            "setting": model, "label": "sgd", "seed": seed})
            entries.append({"run": make_run(root, f"{model}-rbwa-{seed}", model=model, accs=(10, sgd_acc + gain),
                                            loss=0.4 - 0.1 * (gain > 0)),
                            "setting": model, "label": "rbwa", "seed": seed})
    manifest = {"experiment": experiment, "title": "Test sweep", "setting": setting, "preset": "smoke",
                "runs": entries}
    (root / f"{experiment}.json").write_text(json.dumps(manifest))


def _cells(line: str) -> list[str]:
    """A markdown table row's cells: split at each '|' that is not escaped."""
    import re

    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def answer(report: str, claim: str) -> list[str]:
    """The answers-table row of a question: [number and marks, question, difference, effect, n, p, verdict]."""
    rows = [_cells(x) for x in report.splitlines() if x.startswith('| <a name="q')]
    found = [r for r in rows if r[1] == claim]
    assert len(found) == 1, [r[1] for r in rows]
    found[0][0] = found[0][0].split("</a>")[1]
    return found[0]


def detail(report: str, number: int) -> list[str]:
    """The appendix row of an answer: [number, final-epoch verdict, last-epochs measure, largest gap, seeds † , ‡]."""
    start = report.index("## Appendix")
    return next(_cells(x) for x in report[start:].splitlines() if x.startswith(f"| {number} |"))


def identity(report: str, claim: str) -> list[str]:
    """The identities-table row: [identity, seeds, largest gap in items, tolerance, loss gap, holds]."""
    row = next(_cells(x) for x in report.splitlines() if x.startswith("| <a name=\"i") and x.endswith(" |")
               and x.split("</a>")[1].startswith(f"{claim} |"))
    return [row[0].split("</a>")[1], *row[1:]]


def test_one_seed_gets_no_interval_and_no_verdict(tmp_path):
    make_sweep(tmp_path, {"resnet18": [2.0]})
    report = write_report(tmp_path).read_text()
    claim = "Claim 1, CIFAR-10, model resnet18: RBWA reaches higher final test accuracy than SGD"
    assert answer(report, claim) == ["1", claim, "RBWA - SGD", "+2.00 points", "1", "-",
                                     "inconclusive (fewer than 2 seeds)"]
    assert detail(report, 1)[1] == "inconclusive at this scale (fewer than 2 seeds); paper: +1.38"
    assert "Holm-adjusted over the 0 tests of this report" in report


def test_verdicts_follow_the_intervals(tmp_path):
    make_sweep(tmp_path, {"resnet18": [2.0, 2.5, 3.0], "vgg16": [-2.0, -2.5, -3.0]})
    report = write_report(tmp_path).read_text()
    # gains 2, 2.5, 3: sd 0.5, half-width t(0.975, 2) 0.5 / sqrt 3 = 1.242; t = 2.5 / 0.2887 = 8.66 on 2 df
    from scipy.stats import t

    p = 2 * t.sf(2.5 / (0.5 / 3 ** 0.5), 2)
    row = answer(report, "Claim 1, CIFAR-10, model resnet18: RBWA reaches higher final test accuracy than SGD")
    # Holm over 3 tests: the two models' accuracy p's (equal, so both x 3) and vgg16's loss (0 every seed: p = 1);
    # resnet18's loss differs by 0.1 in every seed, no spread, no test
    assert row[2:] == ["RBWA - SGD", "+2.50 [+1.26, +3.74] points", "3", f"{3 * p:.3g}", "supported"]
    assert detail(report, int(row[0]))[1:3] == ["supported; paper: +1.38", "supported, +2.50 [+1.26, +3.74]"]
    vgg = answer(report, "Claim 1, CIFAR-10, model vgg16: RBWA reaches higher final test accuracy than SGD")
    assert vgg[3] == "-2.50 [-3.74, -1.26] points" and vgg[6] == "not supported (the opposite holds)"
    assert "Not in this directory, so not answered here: fig5, table1, variants, controls" in report
    for png in ("fig3-resnet18.png", "fig3-vgg16.png"):
        assert (tmp_path / png).stat().st_size > 10_000 and f"]({png})" in report
    assert "| fig3 | model resnet18 | rbwa | 3 | 53.50 ± 1.50 | 53.50 ± 1.50 | 0.3000 ± 0.0000 |" in report
    assert "| model resnet18 | sgd | 3 | 51.00 ± 1.00 |" in report and "| 81.98 | 0.013 | 93-95.7 (a) | - |" in report
    assert "(a) a tuned ResNet-18" in report
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    r = next(r for r in rows if r["setting"] == "resnet18" and r["method"] == "rbwa")
    assert float(r["diff_vs_sgd"]) == pytest.approx(2.5) and float(r["paper_acc"]) == 83.36 and r["n"] == "3"


def test_small_noisy_gain_is_inconclusive_or_rules_out_the_paper(tmp_path):
    make_sweep(tmp_path, {"resnet18": [-1.0, 0.5, 1.5], "vgg16": [-0.3, 0.0, 0.3]})
    report = write_report(tmp_path).read_text()
    row = answer(report, "Claim 1, CIFAR-10, model resnet18: RBWA reaches higher final test accuracy than SGD")
    assert detail(report, int(row[0]))[1] == "inconclusive at this scale; paper: +1.38"
    vgg = answer(report, "Claim 1, CIFAR-10, model vgg16: RBWA reaches higher final test accuracy than SGD")
    assert detail(report, int(vgg[0]))[1].startswith("not supported (the paper's difference of +2.51 lies above")


def test_diverged_and_missing_runs_are_shown(tmp_path):
    make_sweep(tmp_path, {"resnet18": [1.0, 2.0]})
    manifest = json.loads((tmp_path / "fig3.json").read_text())
    manifest["runs"].append({"run": make_run(tmp_path, "x-div", status="diverged"), "setting": "resnet18",
                             "label": "rbwa", "seed": 2})
    manifest["runs"].append({"run": "runs/never", "setting": "resnet18", "label": "sgd", "seed": 2})
    (tmp_path / "fig3.json").write_text(json.dumps(manifest))
    report = write_report(tmp_path, tmp_path / "out").read_text()
    assert "| model resnet18 | rbwa | 2 |" in report and "1 diverged" in report and "1 not run" in report


def test_report_needs_manifests(tmp_path):
    with pytest.raises(UserError, match="no experiment manifests"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="is not a directory"):
        write_report(tmp_path / "missing")


def test_table1_claims_from_constructed_runs(tmp_path):
    entries = []
    for b, gain in ((16, 3.0), (32, 3.5), (64, 2.5), (128, 0.0), (256, 0.2)):
        for seed in range(3):
            for label, acc in (("sgd", 50.0 + seed), ("rbwa", 50.0 + seed + gain + 0.1 * seed)):
                entries.append({"run": make_run(tmp_path, f"{b}-{label}-{seed}", batch=b, accs=(10, acc)),
                                "setting": str(b), "label": label, "seed": seed})
    (tmp_path / "table1.json").write_text(json.dumps({"experiment": "table1", "title": "t", "setting": "batch size",
                                                      "preset": "smoke", "runs": entries}))
    report = write_report(tmp_path).read_text()
    # claim 3 is a Welch contrast of the five batch sizes' gains (each arm's gains are 3 + 0.1 s, s = 0, 1, 2, and
    # so on: all variances 0.01): (3.1 + 3.6 + 2.6) / 3 - (0.1 + 0.3) / 2 = 2.9, standard error
    # sqrt(3 * 0.01 / 3 / 9 + 2 * 0.01 / 3 / 4)
    from scipy.stats import t

    se = (0.01 / 9 + 0.02 / 12) ** 0.5
    df = se ** 4 / (3 * (0.01 / 27) ** 2 / 2 + 2 * (0.01 / 12) ** 2 / 2)
    lo, hi = 2.9 - t.ppf(0.975, df) * se, 2.9 + t.ppf(0.975, df) * se
    row = answer(report, "Claim 3: the gain is larger at batch sizes 16-64 than at 128-256")
    assert row[2:5] == ["mean gain at 16-64 minus mean gain at 128-256", f"+2.90 [{lo:+.2f}, {hi:+.2f}] points", "3"]
    assert detail(report, int(row[0]))[1].startswith("supported; paper: +1.30; the batch sizes are independent runs, "
                                                     "so this is a Welch contrast")
    # 3b: RBWA at 32 (54.6 mean) against each other batch size by Welch, and the ones it cannot be told from named
    assert ("Claim 3b: the best batch size for RBWA is 32 (paper): our highest mean final test accuracy is at 32 "
            "(54.60%; 16: 54.10%, 64: 53.60%, 128: 51.10%, 256: 51.30%); 32 minus each other batch size (Welch 95% "
            "intervals, uncorrected): 16: +0.50 [") in report
    assert "32 is not distinguishable from 16, 64: these runs do not rank those batch sizes." in report
    assert "| batch size 16 | sgd | 3 | 51.00 ± 1.00 |" in report and "| 82.27 | 0.01776 |" in report
    assert "](table1-gain.png)" in report and (tmp_path / "table1-gain.png").stat().st_size > 10_000


def test_variants_get_a_verdict_each(tmp_path):
    make_sweep(tmp_path, {"resnet18": [2.0, 2.5, 3.0]}, experiment="variants")
    report = write_report(tmp_path).read_text()
    row = answer(report, "Does rbwa beat sgd?")
    assert row[2:5] == ["rbwa - sgd", "+2.50 [+1.26, +3.74] points", "3"] and row[6] == "supported"
    assert detail(report, int(row[0]))[2] == "supported, +2.50 [+1.26, +3.74]"
    # the training losses differ by exactly 0.1 in every seed: no spread, so no interval and no test
    loss = answer(report, "Is rbwa's final training loss lower than sgd's?")
    assert loss[2:] == ["sgd - rbwa", "+0.1000", "3", "-", "inconclusive (no spread between seeds: not tested)"]
    assert detail(report, int(loss[0]))[1] == ("inconclusive at this scale (every seed's difference is the same: no "
                                               "spread to estimate an interval from)")


def _pair_sweep(root: Path, experiment: str, label: str, curves: dict[int, tuple[list[float], list[float]]],
                test_size: int = 2000) -> None:
    """sgd and ``label`` runs with the given test-accuracy curves (epoch 0 first) per seed."""
    entries = []
    for seed, (base, other) in curves.items():
        for name, accs in (("sgd", base), (label, other)):
            run = make_run(root, f"{name}-{seed}".replace(" ", "_"), accs=tuple(accs))
            summary = json.loads((root / run / "summary.json").read_text())
            (root / run / "summary.json").write_text(json.dumps({**summary, "test_size": test_size}))
            entries.append({"run": run, "setting": "resnet18", "label": name, "seed": seed})
    (root / f"{experiment}.json").write_text(json.dumps({"experiment": experiment, "title": "t",
                                                          "setting": "model", "preset": "smoke", "runs": entries}))


def test_last_epochs_measure_and_holm_are_shown_beside_the_final_verdict(tmp_path):
    # final epoch: +1, +1.5, +2 (supported); the 5 epochs before it: -3 each, so the last-5 means are
    # (-3 x 4 + d) / 5 = -2.2, -2.1, -2.0: the opposite holds, and the report must say the measures disagree
    curves = {s: ([10] + [50.0] * 9, [10] + [50.0] * 4 + [47.0] * 4 + [50.0 + d])
              for s, d in enumerate((1.0, 1.5, 2.0))}
    _pair_sweep(tmp_path, "variants", "rbwa-e", curves)
    report = write_report(tmp_path).read_text()
    row = answer(report, "Does rbwa-e beat sgd?")
    assert row[3] == "+1.50 [+0.26, +2.74] points"
    assert detail(report, int(row[0]))[1:3] == ["supported", "not supported (the opposite holds), -2.10 [-2.35, -1.85] "
                                                "(**the two disagree**)"]
    # two tests in this report (accuracy; rbwa-e's loss ties at 0 every epoch, p = 1): Holm doubles the
    # smaller p. Accuracy: t = 1.5 / (0.5 / sqrt 3) = 5.196 on 2 df, p = 1 - t / sqrt(t^2 + 2) = 0.0351,
    # significant alone but not after the correction
    p = 1 - 5.196152 / (5.196152 ** 2 + 2) ** 0.5
    assert row[5:] == [f"{2 * p:.3g}", "inconclusive after correction"]
    assert "Holm-adjusted over the 2 tests of this report" in report


def test_no_difference_needs_whole_curves_within_one_test_image(tmp_path):
    # equal at the final epoch in every seed, but one seed is 3 images apart at epoch 2
    one = 100 / 2000
    curves = {0: ([10, 40, 45, 50], [10, 40, 45, 50]), 1: ([10, 41, 46, 51], [10, 41 + one, 46, 51]),
              2: ([10, 42, 47, 52], [10, 42, 47 + 3 * one, 52])}
    _pair_sweep(tmp_path, "controls", "sgd (harmonic LR, = rbwa)", {s: (c[1], c[0]) for s, c in curves.items()})
    text = (tmp_path / "controls.json").read_text().replace('"sgd"', '"rbwa"')
    (tmp_path / "controls.json").write_text(text)
    report = write_report(tmp_path).read_text()
    # an identity, not a test: no row in the answers table, a row among the identities
    assert "Does rbwa beat sgd (harmonic LR, = rbwa)?" not in report and '<a name="q' not in report
    assert identity(report, "rbwa = sgd on the harmonic LR") == [
        "rbwa = sgd on the harmonic LR", "3", "3 of 2,000 test images", "1", "0 nats", "+0.00 [+0.00, +0.00] points",
        "- / -", "**no**"]
    # within one image at every epoch: no difference
    (tmp_path / "runs").rename(tmp_path / "old")
    curves[2] = ([10, 42, 47, 52], [10, 42, 47 + one, 52])
    _pair_sweep(tmp_path, "controls", "sgd (harmonic LR, = rbwa)", {s: (c[1], c[0]) for s, c in curves.items()})
    (tmp_path / "controls.json").write_text((tmp_path / "controls.json").read_text().replace('"sgd"', '"rbwa"'))
    report = write_report(tmp_path).read_text()
    assert identity(report, "rbwa = sgd on the harmonic LR")[2:] == ["1 of 2,000 test images", "1", "0 nats",
                                                                     "+0.00 [+0.00, +0.00] points", "- / -", "yes"]
    assert "1 of 1 identity within tolerance" in report


def test_mechanism_figure_from_the_fold_rule(tmp_path):
    make_sweep(tmp_path, {"resnet18": [2.0, 2.5]})
    for summary in (tmp_path / "runs").glob("*rbwa*/summary.json"):
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps_per_epoch": 782}))
    for config in (tmp_path / "runs").glob("*/config.json"):
        config.write_text(json.dumps({**json.loads(config.read_text()), "method": "rbwa"}))
    report = write_report(tmp_path).read_text()
    # one epoch after the start the fold weight is 1/(782+1) here and 1/(79+1) at the cpu preset's 5,000 images
    assert "the step is lr/783 = 6.4e-05 at 782 batches an epoch and lr/80 = 0.00063 at 79" in report
    assert "RBWA is its base optimizer (SGD) with" in report
    assert (tmp_path / "effective-lr.png").stat().st_size > 10_000 and "](effective-lr.png)" in report
    # a language model's sweep: no image preset to compare with, and its base optimizer named
    for config in (tmp_path / "runs").glob("*/config.json"):
        from rbwa.training.config import TrainConfig

        config.write_text(json.dumps({**TrainConfig().to_dict(), **json.loads(config.read_text()), "model": "gpt",
                                      "optimizer": "adamw"}))
    report = write_report(tmp_path).read_text()
    assert "the step is lr/783 = 6.4e-05 at its 782 batches an epoch; the epoch counter's" in report
    assert "RBWA is its base optimizer (AdamW) with" in report and "at 79" not in report


@pytest.mark.parametrize("folder", sorted(p.name for p in (Path(__file__).resolve().parents[2] / "results").iterdir()
                                          if (p / "report.md").exists()))
def test_committed_reports_regenerate_byte_for_byte(tmp_path, monkeypatch, folder):
    """`rbwa report results/X` (from the repository root) gives the committed report.md and results.csv."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    write_report(Path("results") / folder, tmp_path)
    for name in ("report.md", "results.csv"):
        assert (tmp_path / name).read_bytes() == (root / "results" / folder / name).read_bytes(), name


def test_the_report_names_the_methods_whose_batchnorm_is_re_estimated(tmp_path):
    _pair_sweep(tmp_path, "writeback", "sema (every epoch)", {0: ([10, 50], [10, 52])})
    assert "BatchNorm:" not in write_report(tmp_path).read_text()  # configs that name no such method
    for run, method in (("sgd-0", "sgd"), ("sema_(every_epoch)-0", "sema")):
        path = tmp_path / "runs" / run / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "method": method}))
    assert ("BatchNorm: before each evaluation of sema (every epoch), the running statistics are re-estimated"
            in write_report(tmp_path).read_text())


def test_a_comparison_two_experiments_share_is_one_test_and_each_run_counts_once(tmp_path):
    # fig3 and variants list the same runs, so "Claim 1" and "Does rbwa beat sgd?" are one test, and so are the two
    # loss claims. Loss differences are 0.1 in every seed: no spread, no test; so Holm is over 1 test and leaves the
    # accuracy p as it is: t = 1.5 / (0.5 / sqrt 3) = 5.196 on 2 df, p = 0.0351 (counted twice, it would double)
    make_sweep(tmp_path, {"resnet18": [1.0, 1.5, 2.0]})
    manifest = json.loads((tmp_path / "fig3.json").read_text())
    (tmp_path / "variants.json").write_text(json.dumps({**manifest, "experiment": "variants"}))
    for i, summary in enumerate(sorted((tmp_path / "runs").glob("*/summary.json"))):
        versions = {"torch": "x", "torch_threads": 2 if i < 2 else 1}
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "versions": versions}))
    report = write_report(tmp_path).read_text()
    p = 1 - 5.196152 / (5.196152 ** 2 + 2) ** 0.5
    row = answer(report, "Claim 1, CIFAR-10, model resnet18: RBWA reaches higher final test accuracy than SGD")
    assert row[0] == "1†" and row[5:] == [f"{p:.3g}", "supported"]
    assert "Does rbwa beat sgd?" not in report.split("## Appendix")[0]  # one row for the one test
    assert ("- Does rbwa beat sgd?: the same test as row 1 (the same runs); final epoch, uncorrected: supported."
            in report)
    assert "Holm-adjusted over the 1 test of this report" in report
    assert "torch threads per run 1 in 4 runs, 2 in 2 runs, device cpu; torch x," in report
    assert "Mean epoch time over 6 runs: 1.0 s." in report


def test_spread_names_each_value_with_its_runs():
    from rbwa.analysis.report import _spread

    assert _spread(["a", "a"]) == "a"
    assert _spread([1, 2, 2]) == "2 in 2 runs, 1 in 1 run"


def test_the_provenance_table_names_each_groups_commits_and_cpu_kinds_once(tmp_path):
    make_sweep(tmp_path, {"resnet18": [1.0, 1.5, 2.0]})
    for i, summary in enumerate(sorted((tmp_path / "runs").glob("*/summary.json"))):  # rbwa-0..2, then sgd-0..2
        if i < 4:
            versions = {"torch_threads": 1, "git": "abc" if i else "def",
                        "cpu": "Xeon (family 6, model 207), torch AVX512" if i else "M1, torch"}
            summary.write_text(json.dumps({**json.loads(summary.read_text()), "versions": versions}))
    report = write_report(tmp_path).read_text()
    xeon = "Xeon (family 6, model 207), torch AVX512"
    assert (f"| fig3 | resnet18 | rbwa | 3 | def (seed 0); abc (seeds 1, 2) | M1, torch (seed 0); {xeon} (seeds 1, 2) "
            "| 1 |") in report
    assert (f"| fig3 | resnet18 | sgd | 3 | abc (seed 0); None (seeds 1, 2) | {xeon} (seed 0); not recorded "
            "(seeds 1, 2) | 1 (seed 0); None (seeds 1, 2) |") in report
    assert "Xeon" not in next(x for x in report.splitlines() if x.startswith("- Machine:"))
    # seed 0's runs differ in CPU kind and commit, seeds 1 and 2 in commit, thread count and CPU kind
    row = answer(report, "Claim 1, CIFAR-10, model resnet18: RBWA reaches higher final test accuracy than SGD")
    assert row[0] == "1†‡" and detail(report, 1)[4:] == ["0, 1, 2", "0, 1, 2"]
    assert report.count("different commits") == 1  # the marks' legend; the seeds in the appendix


def test_a_verdict_names_the_seeds_whose_runs_ran_with_other_thread_counts(tmp_path):
    make_sweep(tmp_path, {"resnet18": [1.0, 1.5, 2.0]})
    summary = tmp_path / "runs/resnet18-rbwa-1/summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "versions": {"torch_threads": 2}}))
    report = write_report(tmp_path).read_text()
    assert answer(report, "Claim 1, CIFAR-10, model resnet18: RBWA reaches higher final test accuracy than SGD")[0] \
        == "1†" and detail(report, 1)[4:] == ["1", "-"]
    assert "† In some seed the paired runs recorded different CPU kinds or thread counts" in report
    other = tmp_path / "runs/resnet18-rbwa-2/summary.json"
    other.write_text(json.dumps({**json.loads(other.read_text()), "versions": {"torch_threads": 2}}))
    assert detail(write_report(tmp_path).read_text(), 1)[4] == "1, 2"


def _posthoc_rows(path: Path, swa: dict[str, float], final: float, bn_images: int = 1000,
                  ema: dict[int, float] | None = None) -> None:
    """A posthoc.csv of SWA starts, the final weights alone (LAWA of the last epoch end, BatchNorm re-estimated) and
    EMA half-lives (``ema``: half-life -> accuracy)."""
    import csv as csv_module

    from rbwa.analysis.posthoc import FIELDS

    path.mkdir()
    with open(path / "posthoc.csv", "w", newline="") as f:
        writer = csv_module.DictWriter(f, FIELDS)
        writer.writeheader()
        for start, acc in swa.items():
            writer.writerow({"family": "swa", "value": start, "label": f"SWA from epoch {start}", "test_acc": acc,
                             "test_loss": 1.0, "snapshots": 3, "first_step": 10, "last_step": 30,
                             "bn_images": bn_images})
        writer.writerow({"family": "lawa", "value": 1, "label": "LAWA, last 1 epoch ends", "test_acc": final,
                         "test_loss": 1.0, "snapshots": 1, "first_step": 30, "last_step": 30, "bn_images": bn_images})
        for half_life, acc in (ema or {}).items():
            writer.writerow({"family": "ema", "value": half_life, "label": f"EMA, half-life {half_life} steps",
                             "test_acc": acc, "test_loss": 1.0, "snapshots": 3, "first_step": 10, "last_step": 30,
                             "bn_images": bn_images})


def _snapshot_run(root: Path, entries: list[dict], name: str, label: str, seed: int, acc: float,
                  swa: dict[str, float], final: float, bn_images: int = 1000,
                  ema: dict[int, float] | None = None) -> str:
    """A finished snapshot run ``name-seed`` ending at ``acc``, with its posthoc.csv (:func:`_posthoc_rows`), entered
    in the manifest's ``entries`` under ``label``."""
    run = make_run(root, f"{name}-{seed}", accs=(10, acc))
    entries.append({"run": run, "setting": "resnet18", "label": label, "seed": seed})
    _posthoc_rows(root / run / "posthoc", swa, final, bn_images, ema)
    return run


def _posthoc_manifest(root: Path, entries: list[dict]) -> None:
    (root / "posthoc.json").write_text(json.dumps({"experiment": "posthoc", "title": "Post-hoc", "setting": "model",
                                                   "preset": "smoke", "runs": entries}))


def test_the_post_hoc_section_chooses_on_the_other_seeds_and_compares_with_the_same_seeds_runs(tmp_path):
    make_sweep(tmp_path, {"resnet18": [1.0, 1.0, 1.0]})  # rbwa = sgd + 1 at 50, 51, 52: 51, 52, 53
    entries = []
    # constant-LR runs end at 50, 51, 52 (their final weights re-estimated: 51, 52, 53); two SWA starts whose
    # accuracies favour start 2 on seeds 1 and 2
    swa = {0: {"2": 60.0, "3": 55.0}, 1: {"2": 58.0, "3": 59.0}, 2: {"2": 62.0, "3": 61.0}}
    # cosine-LR runs: final weights re-estimated 65, 66, 67; held out, seed 2 sees a tie (70.5 each): the earlier start
    cosine = {0: {"2": 70.0, "3": 69.0}, 1: {"2": 71.0, "3": 72.0}, 2: {"2": 73.0, "3": 70.0}}
    for seed in range(3):
        _snapshot_run(tmp_path, entries, "snap", "sgd (snapshots)", seed, 50.0 + seed, swa[seed], 51.0 + seed,
                      1000 + 500 * (seed == 2))
        _snapshot_run(tmp_path, entries, "cos", "sgd (cosine LR, snapshots)", seed, 64.0 + seed, cosine[seed],
                      65.0 + seed)
        # WSD-LR runs: final weights re-estimated 63, 64.5, 65
        _snapshot_run(tmp_path, entries, "wsd", "sgd (wsd, snapshots)", seed, 60.0 + seed, cosine[seed],
                      (63.0, 64.5, 65.0)[seed])
    _posthoc_manifest(tmp_path, entries)
    report = write_report(tmp_path).read_text()
    # held out, each seed gets start 2: seeds 1 and 2 prefer it 60 to 60 (a tie: the earlier start), seeds 0 and 2
    # 61 to 58, seeds 0 and 1 59 to 57; alone, seed 1 would pick start 3
    assert ("CIFAR-10, constant-LR SGD: post-hoc SWA start, chosen on the other seeds: seed 0: SWA from epoch 2 "
            "(60.00%); seed 1: SWA from epoch 2 (58.00%); seed 2: SWA from epoch 2 (62.00%); the best on each seed "
            "alone: seed 0: SWA from epoch 2; seed 1: SWA from epoch 3; seed 2: SWA from epoch 2 (it differs between "
            "seeds)") in report
    # against the final weights re-estimated: 60 - 51, 58 - 52, 62 - 53; as trained: 60 - 50, 58 - 51, 62 - 52
    own = answer(report, "CIFAR-10: does the best post-hoc SWA start of constant-LR SGD, chosen on the other seeds, "
                         "beat the same run's final weights (BatchNorm re-estimated)?")
    assert own[2] == "post-hoc swa - final weights" and own[3].startswith("+8.00 [") and own[4] == "3"
    assert detail(report, int(own[0]))[1:3] == ["supported", "- (the end of training only)"]
    assert "with BatchNorm as trained, the post-hoc SWA start gains +9.00 [" in report
    # against RBWA: 60 - 51, 58 - 52, 62 - 53; against cosine's re-estimated final weights: -5, -8, -5
    rbwa = answer(report, "CIFAR-10: does the best post-hoc SWA start of constant-LR SGD, chosen on the other seeds, "
                          "beat RBWA?")
    assert rbwa[2] == "post-hoc swa - RBWA" and rbwa[3].startswith("+8.00 [")
    decay = answer(report, "CIFAR-10: can an average replace the decay: does the best post-hoc SWA start of "
                           "constant-LR SGD beat cosine-LR SGD's final weights (BatchNorm re-estimated)?")
    assert decay[2] == "post-hoc swa - cosine-LR SGD" and decay[3].startswith("-6.00 [")
    assert detail(report, int(decay[0]))[1] == "not supported (the opposite holds)"
    # the averages as methods: chosen on the other seeds, scored held out (60, 58, 62); final weights 51, 52, 53
    assert ("| posthoc | model resnet18 | sgd (snapshots): post-hoc SWA start, chosen on the other seeds | 3 | "
            "60.00 ± 2.00 | - | - | - | - | - | - |") in report
    assert "| sgd (snapshots): final weights, BatchNorm re-estimated | 3 | 52.00 ± 1.00 |" in report
    # cosine: chosen 70, 71, 73 against 65, 66, 67 (+5.33) and against constant's 60, 58, 62 (+11.33)
    assert "seed 2: SWA from epoch 2 (73.00%)" in report
    on_top = answer(report, "CIFAR-10: does averaging add on top of the decay: does the best post-hoc SWA start of "
                            "cosine-LR SGD beat its final weights (BatchNorm re-estimated)?")
    assert on_top[2] == "post-hoc swa of cosine - final weights" and on_top[3].startswith("+5.33 [")
    assert answer(report, "CIFAR-10: does the best post-hoc SWA start of cosine-LR SGD beat constant-LR SGD's?")[3] \
        .startswith("+11.33 [")
    assert ("CIFAR-10: every candidate's BatchNorm statistics were re-estimated on 1000 or 1500 training images (`rbwa "
            "posthoc --bn-images`), and so were the final weights it is compared with") in report
    assert "](runs/snap-0/posthoc/posthoc.png)" not in report  # no figure was written for these hand-made runs
    # WSD's final weights against cosine's, both re-estimated: 63 - 65, 64.5 - 66, 65 - 67; the average chosen on
    # the other seeds against WSD's: 60 - 63, 58 - 64.5, 62 - 65
    wsd = answer(report, "CIFAR-10: does WSD (its last 20% decayed linearly to 0) beat cosine: final weights, "
                         "BatchNorm re-estimated?")
    assert wsd[2] == "WSD - cosine-LR SGD" and wsd[3].startswith(f"{(-2 - 1.5 - 2) / 3:+.2f} [")
    instead = answer(report, "CIFAR-10: can an average replace WSD's decay: does the best post-hoc SWA start of "
                             "constant-LR SGD beat WSD-LR SGD's final weights (BatchNorm re-estimated)?")
    assert instead[3].startswith(f"{(-3 - 6.5 - 3) / 3:+.2f} [")
    assert detail(report, int(instead[0]))[1] == "inconclusive at this scale"


def test_an_average_of_any_family_chooses_the_family_on_the_other_seeds_and_states_its_optimism(tmp_path):
    entries = []
    # constant-LR runs: SWA from epoch 2 at 60, 58, 62; an EMA at 61, 59, 55; final weights 51, 52, 53. Held out,
    # seeds 0 and 1 choose SWA (others' means: 60 against 57, 61 against 58); seed 2 the EMA (59 against 60), which
    # scores 55 there: any family's choices 60, 58, 55, where each seed's own best is 61, 59, 62 (optimism 1, 1, 7)
    ema = {0: 61.0, 1: 59.0, 2: 55.0}
    for seed in range(3):
        _snapshot_run(tmp_path, entries, "snap", "sgd (snapshots)", seed, 50.0 + seed, {"2": (60.0, 58.0, 62.0)[seed]},
                      51.0 + seed, ema={100: ema[seed]})
        # WSD's final weights re-estimated: 57
        _snapshot_run(tmp_path, entries, "wsd", "sgd (wsd, snapshots)", seed, 60.0 + seed, {"2": 58.0}, 57.0)
    _posthoc_manifest(tmp_path, entries)
    report = write_report(tmp_path).read_text()
    assert ("CIFAR-10, constant-LR SGD: post-hoc average (any family), chosen on the other seeds: seed 0: SWA from "
            "epoch 2 (60.00%); seed 1: SWA from epoch 2 (58.00%); seed 2: EMA, half-life 100 steps (55.00%); the best "
            "on each seed alone: seed 0: EMA, half-life 100 steps; seed 1: EMA, half-life 100 steps; seed 2: SWA from "
            "epoch 2 (it differs between seeds); the leave-one-out optimism (a seed's own best beyond the choice made "
            "on the others) 3.00 points on average, 7.00 at most") in report
    # the SWA family alone: each seed chooses SWA from epoch 2, its own best: no optimism
    assert "seed 2: SWA from epoch 2 (the same on every seed); the leave-one-out optimism (a seed's own best beyond " \
           "the choice made on the others) 0.00 points on average, 0.00 at most" in report
    # against the final weights: 60 - 51, 58 - 52, 55 - 53; against WSD's: 60 - 57, 58 - 57, 55 - 57
    own = answer(report, "CIFAR-10: does the best post-hoc average (any family) of constant-LR SGD, chosen on the "
                         "other seeds, beat the same run's final weights (BatchNorm re-estimated)?")
    assert own[2] == "post-hoc any family - final weights" and own[3].startswith(f"{17 / 3:+.2f} [")
    instead = answer(report, "CIFAR-10: can an average replace WSD's decay: does the best post-hoc average (any "
                             "family) of constant-LR SGD beat WSD-LR SGD's final weights (BatchNorm re-estimated)?")
    assert instead[3].startswith(f"{2 / 3:+.2f} [")
    assert ("| posthoc | model resnet18 | sgd (snapshots): post-hoc average (any family), chosen on the other seeds "
            f"| 3 | {173 / 3:.2f} ± ") in report
    # the tuned questions only: no RBWA, nothing of the cosine runs, no gain over BatchNorm as trained
    assert "post-hoc average (any family) gains" not in report
    assert "any family) of constant-LR SGD, chosen on the other seeds, beat RBWA" not in report


def test_seeds_that_share_no_post_hoc_candidate_get_one_line_not_a_crash(tmp_path):
    entries = []
    for seed in range(2):
        # another SWA grid per seed
        _snapshot_run(tmp_path, entries, "snap", "sgd (snapshots)", seed, 50.0 + seed, {str(2 + seed): 60.0}, 51.0)
    _posthoc_manifest(tmp_path, entries)
    report = write_report(tmp_path).read_text()
    assert ("CIFAR-10, constant-LR SGD: the seeds' posthoc.csv files share no SWA start candidate (each seed was "
            "evaluated on another grid), so none is chosen; rerun `rbwa posthoc` with the same grid.") in report


def test_the_choices_are_compared_across_datasets_once_two_have_them(tmp_path):
    """A line per family in the last post-hoc section: each choice with the seeds that made it, per dataset."""
    for experiment, dataset, swa in (("posthoc", "cifar10", {0: {"2": 60.0, "3": 55.0}, 1: {"2": 58.0, "3": 59.0},
                                                             2: {"2": 62.0, "3": 61.0}}),
                                     ("posthoc-cifar100", "cifar100", {0: {"2": 30.0, "3": 35.0},
                                                                       1: {"2": 31.0, "3": 36.0}})):
        entries = []
        for seed, accs in swa.items():
            run = make_run(tmp_path, f"{dataset}-snap-{seed}", accs=(10, 20.0 + seed))
            config = tmp_path / run / "config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()), "dataset": dataset}))
            entries.append({"run": run, "setting": "resnet18", "label": "sgd (snapshots)", "seed": seed})
            _posthoc_rows(tmp_path / run / "posthoc", accs, 21.0 + seed)
        (tmp_path / f"{experiment}.json").write_text(json.dumps({"experiment": experiment, "title": experiment,
                                                                 "setting": "model", "preset": "smoke",
                                                                 "runs": entries}))
        lines = write_report(tmp_path).read_text().splitlines()
        across = [x for x in lines if x.startswith("- Across datasets, the post-hoc SWA")]
        if dataset == "cifar10":  # one dataset: nothing to compare yet
            assert across == []
    # CIFAR-10 chooses start 2 on every seed (seed 1 held out: 61 against 58); CIFAR-100 start 3 on both
    line = ("- Across datasets, the post-hoc SWA start chosen on the other seeds. Constant-LR SGD, on CIFAR-10: SWA "
            "from epoch 2 (seeds 0, 1, 2); on CIFAR-100: SWA from epoch 3 (seeds 0, 1) (2 different choices on 5 "
            "seeds).")
    assert across == [line]  # once: in the appendix, under the last post-hoc experiment
    appendix = lines[lines.index("## Appendix: details"):]
    assert appendix.index(line) > appendix.index("### posthoc-cifar100") > appendix.index("### posthoc")


def test_picks_text_lists_each_choice_with_its_seeds_the_most_chosen_first():
    from rbwa.analysis.findings.posthoc import picks_text

    assert picks_text({0: "b", 1: "a", 2: "a", 3: "c"}) == "a (seeds 1, 2), b (seed 0), c (seed 3)"


def test_post_hoc_baselines_come_from_runs_of_the_same_dataset(tmp_path):
    """CIFAR-100's RBWA runs (fig5) are no baseline for CIFAR-10's snapshot runs, though both are ResNet-18's."""
    make_sweep(tmp_path, {"resnet18": [1.0, 1.0, 1.0]}, experiment="fig5")
    for config in (tmp_path / "runs").glob("*/config.json"):
        config.write_text(json.dumps({**json.loads(config.read_text()), "dataset": "cifar100"}))
    entries = []
    for seed in range(3):
        _snapshot_run(tmp_path, entries, "snap", "sgd (snapshots)", seed, 50.0 + seed, {"2": 60.0 + seed}, 51.0 + seed)
    _posthoc_manifest(tmp_path, entries)
    report = write_report(tmp_path).read_text()
    assert "beat the same run's final weights (BatchNorm re-estimated)?" in report
    assert "beat RBWA?" not in report


def test_the_lm_experiment_end_to_end_on_a_tiny_text(tmp_path, capsys):
    """`rbwa reproduce lm` with a tiny GPT on a small text, `rbwa posthoc` on its constant-LR runs, `rbwa report`:
    the language-model table, claims by validation loss, RBWA no different from its twin, the post-hoc answer."""
    from rbwa.cli import main

    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 60)
    out = tmp_path / "lm"
    flags = ["--preset", "smoke", "--seeds", "2", "--out", str(out), "--dataset", f"text:{text}", "--context", "16",
             "--layers", "1", "--heads", "2", "--embedding", "16", "--lr", "3e-3", "--eval-batch-size", "64"]
    assert main(["reproduce", "lm", *flags]) == 0
    for run in sorted((out / "runs").glob("gpt-*-sgd-adamw-snap4-*")):
        assert main(["posthoc", str(run), "--dataset", f"text:{text}", "--quiet"]) == 0
    capsys.readouterr()
    report = write_report(out).read_text()
    assert "| experiment | setting | method | n | final val loss (nats/char) | final val bits/char |" in report
    assert "| lm | model gpt | adamw (wsd) | 2 |" in report
    assert "| lm | model gpt | adamw: post-hoc EMA half-life, chosen on the other seeds | 2 |" in report
    claim1 = answer(report, "Claim 1, a GPT on text: RBWA reaches a lower final validation loss than AdamW")
    assert claim1[2] == "AdamW - RBWA" and claim1[4] == "2"
    # RBWA and its twin: an identity within one in 10,000 validation characters (here, at least one), not a test
    twin = identity(report, "rbwa = adamw on the harmonic LR")
    assert twin[1] == "2" and twin[2].endswith(" validation characters") and twin[3] == "1" and twin[-1] == "yes"
    assert "harmonic LR, = rbwa)?" not in report
    assert answer(report, "Does schedule-free adamw reach a lower validation loss than adamw?")[4] == "2"
    assert "A GPT on text, constant-LR AdamW: post-hoc EMA half-life, chosen on the other seeds: seed 0: " in report
    assert answer(report, "A GPT on text, constant-LR AdamW: does the best post-hoc SWA start, chosen on the other "
                          "seeds, reach a lower validation loss than adamw (cosine LR)?")[2] == \
        "adamw (cosine LR) - post-hoc swa"
    assert "| final weights - post-hoc swa |" in report and "\nBatchNorm: before" not in report  # a GPT has none
    assert "Not in this directory" not in report  # an lm directory is not a reproduction of the paper's figures
    assert "- A GPT of 1 layers, 2 heads and width 16" in report and "The paper has no language model" in report
    assert "Differences from the paper's protocol" not in report
    assert (out / "lm-gpt.png").stat().st_size > 10_000


def test_the_answers_table_sentences_figure_and_appendix_come_from_one_computation(tmp_path, monkeypatch):
    """claims() runs once per experiment and collect() once; every rendering reads the rows it returned."""
    import rbwa.analysis.plots as plots
    import rbwa.analysis.report as report_module

    make_sweep(tmp_path, {"resnet18": [2.0, 2.5, 3.0], "vgg16": [-1.0, 0.5, 1.5]})
    manifest = json.loads((tmp_path / "fig3.json").read_text())  # variants: the same runs
    (tmp_path / "variants.json").write_text(json.dumps({**manifest, "experiment": "variants"}))
    calls, captured, drawn = [], [], []
    real_claims, real_collect, real_forest = report_module.claims, report_module.collect, plots.plot_forest
    monkeypatch.setattr(report_module, "claims", lambda exp, *a: calls.append(exp.name) or real_claims(exp, *a))
    monkeypatch.setattr(report_module, "collect", lambda s: captured.append(real_collect(s)) or captured[-1])
    monkeypatch.setattr(plots, "plot_forest", lambda groups, path: drawn.append(groups) or real_forest(groups, path))
    report = write_report(tmp_path).read_text()
    assert calls == ["fig3", "variants"] and len(captured) == 1 and len(drawn) == 1
    answers = captured[0]
    table_rows = [_cells(x) for x in report.splitlines() if x.startswith('| <a name="q')]
    assert [int(r[0].split("</a>")[1].rstrip("†‡")) for r in table_rows] == [a.number for a in answers.rows.values()]
    for cells, a in zip(table_rows, answers.rows.values(), strict=True):
        mean = a.finding.stats("final")[0]
        assert cells[1] == a.finding.claim and cells[6] == a.verdict and cells[3].startswith(f"{mean:+.2f}"[:4])
        assert detail(report, a.number)[1].startswith(a.finding.verdict("final"))
    points = [(label, mean) for _, rows in drawn[0] for label, mean, *_ in rows]
    points.sort(key=lambda point: int(point[0].split(".")[0]))  # grouped by experiment and unit: in row order
    assert [mean for _, mean in points] == [a.finding.stats("final")[0] for a in answers.rows.values()]
    for (label, _), a in zip(points, answers.rows.values(), strict=True):
        assert label.startswith(f"{a.number}. {a.finding.what} (")
    sentences = "\n".join(x for x in report.splitlines() if x.startswith("- **"))
    for a in answers.rows.values():  # every row is named by its experiment's sentence under its verdict's words
        assert str(a.number) in sentences
    # variants' questions are fig3's (the same runs): no row of their own, a pointer in the appendix
    assert len(table_rows) == 4 and "- Does rbwa beat sgd?: the same test as row 1 (the same runs); " in report


@pytest.mark.parametrize("folder", sorted(p.name for p in (Path(__file__).resolve().parents[2] / "results").iterdir()
                                          if (p / "report.md").exists()))
def test_committed_reports_answer_first_and_repeat_nothing(folder):
    """The answers table and its figure in the first 40 lines, no long line twice, the commit clause at most twice,
    and the sizes a reader can take in."""
    text = (Path(__file__).resolve().parents[2] / "results" / folder / "report.md").read_text()
    head = text.splitlines()[:40]
    assert any(x.startswith("| # | question |") for x in head) and any("](answers.png)" in x for x in head)
    long = [x for x in text.splitlines() if len(x) > 80]
    assert len(long) == len(set(long)), [x for x in set(long) if long.count(x) > 1][:2]
    assert text.count("different commits") <= 2
    assert len(text) <= {"cpu-full": 60_000, "cpu-lm": 30_000}.get(folder, 60_000)


def test_a_shared_test_keeps_each_experiments_own_paper_difference_in_the_appendix(tmp_path):
    # table1's batch 64 is fig3's resnet18 (the same runs): one row, but table1 judges it against its own +1.05
    make_sweep(tmp_path, {"resnet18": [-0.062, 0.3, 0.662]})  # CI [-0.60, +1.20]: below fig3's +1.38 only
    manifest = json.loads((tmp_path / "fig3.json").read_text())
    runs = [{**e, "setting": "64"} for e in manifest["runs"]]
    (tmp_path / "table1.json").write_text(json.dumps({**manifest, "experiment": "table1", "setting": "batch size",
                                                      "runs": runs}))
    report = write_report(tmp_path).read_text()
    assert detail(report, 1)[1].startswith("not supported (the paper's difference of +1.38 lies above our 95% CI)")
    assert ("- Claim 1, CIFAR-10, batch size 64: RBWA reaches higher final test accuracy than SGD: the same test as "
            "row 1 (the same runs); final epoch, uncorrected: inconclusive at this scale; paper: +1.05.") in report


def test_an_identity_fails_where_a_twin_diverged_and_carries_its_marks(tmp_path):
    same = {s: ([10, 40, 50], [10, 40, 50]) for s in range(3)}
    _pair_sweep(tmp_path, "controls", "sgd (harmonic LR, = rbwa)", same)
    (tmp_path / "controls.json").write_text((tmp_path / "controls.json").read_text().replace('"sgd"', '"rbwa"'))
    summary = tmp_path / "runs/sgd-2/summary.json"  # the rbwa run of seed 2 (named by its old label)
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "diverged"}))
    other = tmp_path / "runs/sgd-1/summary.json"
    other.write_text(json.dumps({**json.loads(other.read_text()), "versions": {"git": "abc"}}))
    report = write_report(tmp_path).read_text()
    row = identity(report, "rbwa = sgd on the harmonic LR‡")
    assert row[1:3] == ["2", "0 of 2,000 test images"] and row[6:] == ["- / 1", "**no** (diverged in seed 2)"]
    assert "0 of 1 identity within tolerance" in report


def test_a_label_with_a_bar_stays_in_its_cell_and_a_sweep_without_questions_says_so(tmp_path):
    curves = {s: ([10, 50.0], [10, 51.0 + s]) for s in range(3)}
    _pair_sweep(tmp_path, "variants", "ema | fast", curves)
    report = write_report(tmp_path).read_text()
    row = answer(report, "Does ema \\| fast beat sgd?")
    assert row[2] == "ema \\| fast - sgd" and len(row) == 7
    (tmp_path / "mystery.json").write_text((tmp_path / "variants.json").read_text().replace('"variants"',
                                                                                            '"mystery"'))
    (tmp_path / "variants.json").unlink()
    assert "- **mystery** (t): no questions answered yet (no finished pairs of runs to compare)." in \
        write_report(tmp_path).read_text()


def test_a_malformed_manifest_or_a_file_as_out_is_one_line_and_status_2(tmp_path, capsys):
    from rbwa.cli import main

    (tmp_path / "fig3.json").write_text(json.dumps({"experiment": "fig3"}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fig3.json is not an experiment manifest written by `rbwa reproduce`" in err
    (tmp_path / "fig3.json").write_text('{"experiment": "fig3", "runs": [')  # cut short
    assert main(["report", str(tmp_path)]) == 2
    assert "fig3.json is not valid JSON" in capsys.readouterr().err
    make_sweep(tmp_path, {"resnet18": [1.0, 2.0]})
    (tmp_path / "afile").write_text("keep")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "afile")]) == 2
    assert "afile is a file; give --out a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "keep"
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "afile" / "sub")]) == 2  # a file above it
    assert "afile is a file; give --out a directory" in capsys.readouterr().err


@pytest.mark.parametrize("change, problem", [
    ({"experiment": 3}, "'experiment' must be a str, not 3"),
    ({"overrides": ["ab"]}, "'overrides' must be a dict"),
    ({"runs": {}}, "'runs' must be a list"),
    ({"seed": True}, "runs[0]: 'seed' must be a int, not True"),
    ({"seed": 0.2}, "runs[0]: 'seed' must be a int, not 0.2"),
    ({"label": None}, "runs[0]: 'label' must be a str, not None"),
])
def test_a_manifest_of_the_wrong_types_is_refused_in_one_line(tmp_path, change, problem):
    make_sweep(tmp_path, {"resnet18": [1.0, 2.0]})
    manifest = json.loads((tmp_path / "fig3.json").read_text())
    entry = {k: v for k, v in change.items() if k in ("seed", "label")}
    manifest["runs"][0].update(entry)
    manifest.update({k: v for k, v in change.items() if k not in entry})
    (tmp_path / "fig3.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=re.escape(problem)):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_an_identity_counts_a_diverged_run_only_against_a_finished_twin(tmp_path):
    same = {s: ([10, 40, 50], [10, 40, 50]) for s in range(3)}
    _pair_sweep(tmp_path, "controls", "sgd (harmonic LR, = rbwa)", same)
    manifest = json.loads((tmp_path / "controls.json").read_text().replace('"sgd"', '"rbwa"'))
    manifest["runs"].append({"run": make_run(tmp_path, "lonely", status="diverged"), "setting": "resnet18",
                             "label": "rbwa", "seed": 3})  # its twin never ran
    (tmp_path / "controls.json").write_text(json.dumps(manifest))
    assert identity(write_report(tmp_path).read_text(), "rbwa = sgd on the harmonic LR")[-1] == "yes"
