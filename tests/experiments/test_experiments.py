import json
from pathlib import Path

import pytest

from rbwa.errors import UserError
from rbwa.experiments.grids import EXPERIMENTS, expand
from rbwa.experiments.runner import reproduce


@pytest.mark.parametrize(("experiment", "points"), [("fig3", 4), ("fig5", 4), ("table1", 10), ("variants", 8),
                                                    ("controls", 7), ("alternatives", 6),
                                                    ("writeback", 5), ("posthoc", 3), ("posthoc-cifar100", 3),
                                                    ("lm", 8)])
@pytest.mark.parametrize("preset", ["smoke", "cpu", "cpu-full", "paper"])
def test_grid_expansion(tmp_path, experiment, points, preset):
    runs = expand(experiment, preset, seeds=3, out=tmp_path)
    assert len(runs) == points * 3
    assert len({r.config.out for r in runs}) == len(runs)
    assert {r.seed for r in runs} == {0, 1, 2}
    assert not list(tmp_path.iterdir())  # expansion writes nothing


def test_grid_contents(tmp_path):
    table1 = expand("table1", "paper", 1, tmp_path)
    assert sorted({r.config.batch_size for r in table1}) == [16, 32, 64, 128, 256]
    assert {(r.config.epochs, r.config.start_epoch, r.config.width) for r in table1} == {(50, 10, 1.0)}
    fig5 = expand("fig5", "cpu", 1, tmp_path)
    assert {r.config.dataset for r in fig5} == {"cifar100"} and {r.config.model for r in fig5} == {"resnet18", "vgg16"}
    controls = {r.label: r.config for r in expand("controls", "cpu", 1, tmp_path)}
    assert controls["sgd (harmonic LR, = rbwa)"].lr_schedule == "harmonic"
    assert controls["sgd (step x0.1 at start)"].lr_schedule == "step"
    assert controls["sgd (rbwa-e's LR, = rbwa-e)"].lr_schedule == "rbwa-e"
    variants = {r.label: r.config for r in expand("variants", "cpu", 1, tmp_path)}
    assert variants["rbwa (epoch counter)"].counter == "epochs"
    alternatives = {r.label: r.config for r in expand("alternatives", "cpu-full", 1, tmp_path)}
    assert (alternatives["rbwa (epoch counter)"].counter, alternatives["sgd (cosine LR)"].lr_schedule,
            alternatives["sgd (step x0.1 at start)"].lr_schedule, alternatives["swa"].method) == (
        "epochs", "cosine", "step", "swa")
    writeback = {r.label: r.config for r in expand("writeback", "cpu", 1, tmp_path)}
    assert {c.beta for c in writeback.values()} == {c.ema_decay for c in writeback.values()} == {0.999}
    assert (writeback["ema (never written back)"].write_back, writeback["sema (every epoch)"].method) == (0, "sema")
    assert "-wb100-" in writeback["ema, every 100 steps"].out
    for name, dataset in (("posthoc", "cifar10"), ("posthoc-cifar100", "cifar100")):
        constant, cosine, wsd = expand(name, "cpu-full", 1, tmp_path)
        assert {(r.config.snapshots_per_epoch, r.config.method, r.config.dataset) for r in (constant, cosine, wsd)} == {
            (4, "sgd", dataset)}
        assert (constant.config.lr_schedule, cosine.config.lr_schedule, wsd.config.lr_schedule) == (
            "constant", "cosine", "wsd")
        assert wsd.config.decay_fraction == 0.2 and "-sgd-wsd-snap4-s0-" in wsd.name
        assert "-sgd-snap4-s0-" in constant.name and "-sgd-cosine-snap4-s0-" in cosine.name
    # a user's --dataset (an image folder of CIFAR-10, as here) replaces the grid's
    (named,) = [r for r in expand("posthoc", "cpu-full", 1, tmp_path, {"dataset": "digits"})
                if r.config.lr_schedule == "constant"]
    assert named.config.dataset == "digits"
    lm = {r.label: r.config for r in expand("lm", "cpu-lm", 1, tmp_path)}
    assert {(c.model, c.dataset, c.optimizer, c.train_subset) for c in lm.values()} == {("gpt", "shakespeare", "adamw",
                                                                                         None)}
    assert (lm["adamw"].snapshots_per_epoch, lm["adamw (wsd)"].lr_schedule, lm["rbwa"].start_epoch) == (4, "wsd", 1)
    tuned = {r.label: r.config for r in expand("lm-tuned", "cpu-lm", 1, tmp_path)}
    assert len(tuned) == 14 and {c.lr for c in tuned.values()} == {5e-4, 1e-3, 2e-3, 4e-3}
    assert tuned["adamw (snapshots), lr 0.002"].snapshots_per_epoch == 16
    assert tuned["adamw (wsd, decay 0.4), lr 0.001"].decay_fraction == 0.4
    # the 1e-3 cosine and WSD runs are the lm experiment's own: trained once
    assert tuned["adamw (cosine LR), lr 0.001"].out == lm["adamw (cosine LR)"].out
    assert set(EXPERIMENTS) == {"fig3", "fig5", "table1", "variants", "controls", "alternatives", "writeback",
                                "posthoc", "posthoc-cifar100", "lm", "lm-tuned"}


def test_runs_go_seed_by_seed_within_a_setting(tmp_path):
    # a sweep stopped after any even number of runs leaves whole pairs for the report to compare
    runs = expand("fig3", "smoke", 3, tmp_path)
    assert [(r.setting, r.label, r.seed) for r in runs[:7]] == [
        ("resnet18", "sgd", 0), ("resnet18", "rbwa", 0), ("resnet18", "sgd", 1), ("resnet18", "rbwa", 1),
        ("resnet18", "sgd", 2), ("resnet18", "rbwa", 2), ("vgg16", "sgd", 0)]
    alternatives = expand("alternatives", "smoke", 2, tmp_path)
    assert [r.seed for r in alternatives] == [0] * 6 + [1] * 6
    assert [r.label for r in alternatives[:6]] == [label for _, label, _ in EXPERIMENTS["alternatives"]["grid"]]


def test_shared_runs_have_one_directory(tmp_path):
    fig3 = {r.config.out for r in expand("fig3", "cpu", 2, tmp_path) if r.setting == "resnet18"}
    table1 = {r.config.out for r in expand("table1", "cpu", 2, tmp_path) if r.setting == "64"}
    assert fig3 == table1


def test_seeds_pair_methods_and_user_flags_apply(tmp_path):
    runs = expand("fig3", "smoke", 2, tmp_path, overrides={"dataset": "digits", "lr": 0.1})
    assert {r.config.dataset for r in runs} == {"digits"} and {r.config.lr for r in runs} == {0.1}
    with pytest.raises(UserError, match="controls sets lr_schedule itself"):
        expand("controls", "smoke", 1, tmp_path, overrides={"lr_schedule": "cosine"})


@pytest.mark.parametrize(("args", "message"), [(("fig9", "cpu", 3), "unknown experiment 'fig9'"),
                                               (("fig3", "gpu", 3), "unknown preset 'gpu'"),
                                               (("fig3", "cpu", 0), "--seeds must be >= 1")])
def test_bad_arguments(tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        expand(*args, out=tmp_path)


def test_only_keeps_the_settings_given_and_the_manifest_lists_the_whole_grid(tmp_path, capsys):
    from rbwa.cli import main

    out = tmp_path / "sweep"
    assert main(["reproduce", "table1", "--preset", "smoke", "--seeds", "1", "--out", str(out), "--dataset", "digits",
                 "--dry-run", "--only", "256", "16"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed] == [["16", "sgd"], ["16", "rbwa"], ["256", "sgd"], ["256", "rbwa"]]
    assert not out.exists()  # a dry run writes nothing
    assert main(["reproduce", "table1", "--preset", "smoke", "--seeds", "1", "--out", str(out), "--dataset", "digits",
                 "--only", "48"]) == 2
    assert capsys.readouterr().err.strip() == "error: --only 48: table1 has the settings 16, 32, 64, 128, 256"
    assert not out.exists()  # refused before the manifest is written
    pytest.importorskip("sklearn")
    reproduce("table1", preset="smoke", seeds=1, out=out, overrides={"dataset": "digits", "train_subset": 64,
                                                                    "test_subset": 20, "epochs": 1, "start_epoch": 0},
              only=["256"])
    manifest = json.loads((out / "table1.json").read_text())
    assert len(manifest["runs"]) == 10
    assert {e["setting"] for e in manifest["runs"] if (out / e["run"] / "summary.json").exists()} == {"256"}


def test_reproduce_skips_finished_runs_and_finishes_interrupted_ones(tmp_path, capsys):
    pytest.importorskip("sklearn")
    overrides = {"dataset": "digits", "train_subset": 100, "test_subset": 50}
    runs = reproduce("fig3", preset="smoke", seeds=1, out=tmp_path, overrides=overrides)
    manifest = json.loads((tmp_path / "fig3.json").read_text())
    assert len(manifest["runs"]) == 4 and all((tmp_path / r["run"] / "summary.json").exists() for r in manifest["runs"])
    stamps = {r.config.out: (tmp_path / r.config.out / "summary.json").stat().st_mtime_ns for r in runs}
    # interrupt one run: drop its summary and last epoch, as a kill after epoch 1 would leave it
    victim = runs[1].config.out
    (tmp_path / victim / "summary.json").unlink()
    capsys.readouterr()
    reproduce("fig3", preset="smoke", seeds=1, out=tmp_path, overrides=overrides)
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 3 and out.count(": training") == 1
    for r in runs:
        if r.config.out != victim:
            assert (tmp_path / r.config.out / "summary.json").stat().st_mtime_ns == stamps[r.config.out]
    assert (tmp_path / victim / "summary.json").exists()


def test_a_diverged_run_does_not_stop_the_sweep(tmp_path, capsys):
    pytest.importorskip("sklearn")
    overrides = {"dataset": "digits", "train_subset": 100, "test_subset": 50, "lr": 1e12, "momentum": 0.0,
                 "weight_decay": 0.0}
    runs = reproduce("fig3", preset="smoke", seeds=1, out=tmp_path, overrides=overrides)
    statuses = [json.loads((tmp_path / r.config.out / "summary.json").read_text())["status"] for r in runs]
    assert statuses == ["diverged"] * 4
    assert "4 run(s) diverged" in capsys.readouterr().out


def test_a_second_sweep_only_adds_runs_to_the_manifest_and_another_preset_is_refused(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from rbwa.cli import main
    from rbwa.experiments.runner import status

    overrides = {"dataset": "digits", "train_subset": 100, "test_subset": 50}
    reproduce("fig3", preset="smoke", seeds=2, out=tmp_path, overrides=overrides)
    reproduce("fig3", preset="smoke", seeds=1, out=tmp_path, overrides=overrides)  # fewer seeds: nothing dropped
    manifest = json.loads((tmp_path / "fig3.json").read_text())
    assert len(manifest["runs"]) == 8 and sorted({r["seed"] for r in manifest["runs"]}) == [0, 1]
    assert status(tmp_path)["fig3"]["finished"] == 8
    before = (tmp_path / "fig3.json").read_bytes()
    capsys.readouterr()
    code = main(["reproduce", "fig3", "--preset", "smoke", "--seeds", "1", "--dataset", "digits", "--train-subset",
                 "100", "--test-subset", "50", "--epochs", "3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"error: {tmp_path / 'fig3.json'} lists a fig3 sweep with preset smoke and flags dataset=digits, "
                      "test_subset=50, train_subset=100; this one has preset smoke and flags dataset=digits, epochs=3, "
                      "test_subset=50, train_subset=100: give it another --out (a directory holds one sweep of each "
                      "experiment)")
    assert (tmp_path / "fig3.json").read_bytes() == before
    assert len(list((tmp_path / "runs").iterdir())) == 8  # nothing trained


def test_relative_paths_are_made_absolute_for_workers_elsewhere(tmp_path, monkeypatch):
    from rbwa.training.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    assert absolute_paths({"dataset": "folder:data/cifar", "data_dir": "archives", "cache_dir": "~/c", "lr": 0.1}) == {
        "dataset": f"folder:{tmp_path}/data/cifar", "data_dir": f"{tmp_path}/archives",
        "cache_dir": str(Path("~/c").expanduser()), "lr": 0.1}
    assert absolute_paths({"dataset": "cifar100"}) == {"dataset": "cifar100"}
    runs = reproduce("fig3", preset="smoke", seeds=1, out="sweep", overrides={"dataset": "digits"}, dry_run=True)
    assert all(r.config.out.startswith(f"{tmp_path}/sweep/runs/") for r in runs)


SLOW_PLAN = """
import sys, time
import rbwa.experiments.runner as ex
read = ex.read_manifest
def slow(path):  # a slow filesystem: the manifest read, then a pause before the merge is written
    found = read(path)
    time.sleep(1.0)
    return found
ex.read_manifest = slow
ex.plan("fig3", "smoke", int(sys.argv[2]), sys.argv[1])
"""


def test_two_sweeps_started_together_keep_every_run_in_the_manifest(tmp_path):
    """Each sweep reads, merges and rewrites OUT/<experiment>.json; two at once (3 seeds and 1 seed) must leave the
    3-seed list, not whichever wrote last."""
    import subprocess
    import sys
    import time

    first = subprocess.Popen([sys.executable, "-c", SLOW_PLAN, str(tmp_path), "3"])
    time.sleep(0.3)  # the second reads while the first still sleeps between its read and its write
    second = subprocess.Popen([sys.executable, "-c", SLOW_PLAN, str(tmp_path), "1"])
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    listed = json.loads((tmp_path / "fig3.json").read_text())["runs"]
    assert sorted({r["seed"] for r in listed}) == [0, 1, 2] and len(listed) == 12


def test_the_smoke_preset_trains_every_experiment_in_seconds_the_language_model_too(tmp_path, shared_data):
    """Issue 41: `rbwa reproduce lm --preset smoke` trained 8 runs of 2 epochs on the whole text (16 minutes). The
    smoke preset's subsets now cut a text to its first windows and its GPT is one narrow layer: checked by what it
    trains (200 windows of 32 characters at batch 32 = 7 steps an epoch), not by a timer."""
    from rbwa.cli import main

    data = shared_data("tinyshakespeare").parent
    assert main(["reproduce", "lm", "--preset", "smoke", "--seeds", "1", "--out", str(tmp_path),
                 "--data-dir", str(data), "--cpus-per-run", "1"]) == 0
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("runs/*/summary.json"))]
    assert len(summaries) == len(EXPERIMENTS["lm"]["grid"]) == 8
    for s in summaries:
        assert (s["steps_per_epoch"], s["train_size"], s["test_size"], s["epochs"]) == (7, 200 * 32, 100 * 32, 2)


def test_runs_named_when_the_start_epochs_default_was_10_keep_their_names(tmp_path):
    """Review: the start epoch's default became a fifth of the epochs, and every run at start epoch 10 (the paper
    preset's) got a new name, so finished sweeps read "not started". The names, as rbwa 0.3 gave them."""
    names = [r.name for r in expand("fig3", "paper", 1, tmp_path, {"dataset": "digits"})]
    assert names == ["resnet18-bs64-sgd-s0-2e31df83", "resnet18-bs64-rbwa-s0-ddaebc96", "vgg16-bs64-sgd-s0-2b5955b2",
                     "vgg16-bs64-rbwa-s0-f4ef4c7d"]
