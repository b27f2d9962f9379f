import math
import shutil

import pytest
import torch

from rbwa.analysis.posthoc import candidates, distinct_texts, evaluate_run, read_results
from rbwa.averaging.weights import combine, ema_weights, lawa_weights, swa_weights
from rbwa.checkpoints import snapshots
from rbwa.cli import main
from rbwa.training.config import make_config
from rbwa.training.loop import train

pytest.importorskip("sklearn")


def digits(tmp_path, name, **kw):
    values = {"dataset": "digits", "width": 0.0625, "epochs": 4, "start_epoch": 1, "batch_size": 32,
              "train_subset": 320, "test_subset": 200, "method": "sgd", "out": str(tmp_path / name)}
    cfg = make_config(**{**values, **kw})
    summary = train(cfg, progress=False, log=lambda line: None)
    return tmp_path / name, summary


# ---- the weights of each candidate, by hand --------------------------------------------------------------------
def test_swa_lawa_and_ema_weights_by_hand():
    assert swa_weights(5, 2).tolist() == [0, 0, 1 / 3, 1 / 3, 1 / 3]
    assert lawa_weights([1, 3, 4], 5, 2).tolist() == [0, 0, 0, 0.5, 0.5]
    # decay 0.5 a step; snapshots after 10, 11 and 13 steps: 1, then 0.5 / 0.5, then x 0.25 and 0.75 for the last
    assert ema_weights([10, 11, 13], 0.5, 0).tolist() == [0.125, 0.125, 0.75]
    assert ema_weights([10, 11, 13], 0.5, 1).tolist() == [0, 0.25, 0.75]


def test_the_grid_starts_after_the_start_step():
    # 4 steps an epoch, 2 snapshots an epoch, 3 epochs; averaging starts after epoch 1 (4 steps)
    steps = snapshots.snapshot_steps(4, 3, per_epoch=2)
    assert steps == [2, 4, 6, 8, 10, 12]
    grid = candidates(steps, 4, 4, half_lives=[4.0])
    assert [c.value for c in grid if c.family == "swa"] == [1.5, 2.0, 2.5, 3.0]
    assert [c.weights.tolist() for c in grid if c.family == "lawa"] == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0.5, 0, 0.5]]
    (ema,) = [c for c in grid if c.family == "ema"]
    assert ema.weights[:2].tolist() == [0, 0] and ema.weights.sum() == pytest.approx(1.0)



def test_swa_labels_tell_every_start_apart_and_keep_three_digits_where_those_do():
    # 16 snapshots an epoch over 20 epochs: epochs 10.0625 and 10.125 both read "10.1" at 3 digits; a label names a
    # candidate (a report chooses by it across seeds), so the run's labels take the digits that tell them apart
    steps = snapshots.snapshot_steps(16, 20, per_epoch=16)
    labels = [c.label for c in candidates(steps, 16, 0, families=("swa",)) if c.family == "swa"]
    assert len(set(labels)) == len(labels) == 320
    assert {"SWA from epoch 10.06", "SWA from epoch 10.12", "SWA from epoch 10.19"} <= set(labels)
    # 5 epochs at 16 an epoch tell apart at 3 digits: the labels of the committed runs stay as they were
    short = [c.label for c in candidates(snapshots.snapshot_steps(16, 5, per_epoch=16), 16, 16, families=("swa",))
             if c.family == "swa"]
    assert short[:2] == ["SWA from epoch 1.06", "SWA from epoch 1.12"] and short[-1] == "SWA from epoch 5"
    assert distinct_texts([1.0, 1.0, 2.5]) == ["1", "1", "2.5"]  # equal values may share a text

# ---- what the EMA over a series equals ---------------------------------------------------------------------------
def _online_ema(trajectory: torch.Tensor, decay: float, start: int) -> torch.Tensor:
    avg = trajectory[start].clone()
    for w in trajectory[start + 1:]:
        avg.lerp_(w, 1 - decay)
    return avg


def test_a_coarse_series_is_the_online_ema_where_the_weights_stay_put_between_snapshots():
    torch.manual_seed(0)
    m, decay = 5, 0.97
    blocks = torch.randn(8, 3)
    trajectory = blocks.repeat_interleave(m, dim=0)  # constant within each block of m steps
    steps = [m * (j + 1) for j in range(8)]  # one snapshot at each block's last step
    series = [{"w": blocks[j]} for j in range(8)]
    online = _online_ema(trajectory, decay, m - 1)  # the EMA from the first block's last step
    coarse = combine(series.__getitem__, ema_weights(steps, decay, 0))["w"]
    torch.testing.assert_close(coarse, online, rtol=0, atol=1e-6)


def test_a_coarse_series_approximates_the_online_ema_within_the_weights_movement_between_snapshots():
    t = torch.arange(200, dtype=torch.float64)
    trajectory = torch.stack([torch.sin(t / 30), torch.cos(t / 45)], dim=1)
    decay = 0.98
    online = _online_ema(trajectory, decay, 0)
    errors = []
    for m in (1, 2, 5, 10):
        idx = list(range(0, 200, m))
        series = [{"w": trajectory[i].float()} for i in idx]
        coarse = combine(series.__getitem__, ema_weights(idx, decay, 0))["w"].double()
        movement = max((trajectory[i:i + m] - trajectory[i]).abs().max().item() for i in idx)
        errors.append((coarse - online).abs().max().item())
        assert errors[-1] <= movement + 1e-6  # never further than the weights move between two snapshots
    assert errors[0] < 1e-6 and errors == sorted(errors)  # every step: exact; coarser: further off


# ---- oracles: post-hoc equals the online side average of the same trajectory -------------------------------------
def test_post_hoc_swa_from_epoch_end_snapshots_equals_the_online_swa_run(tmp_path):
    run, _ = digits(tmp_path, "sgd", snapshots_per_epoch=1)
    online, online_summary = digits(tmp_path, "swa", method="swa")  # plain SGD with a side SWA: the same steps
    steps = snapshots.taken(run)
    series = [snapshots.read(run, s)["params"] for s in steps]
    start = steps.index(2 * 10)  # SWA folds at the end of every epoch after the start epoch (10 steps an epoch)
    ours = combine(series.__getitem__, swa_weights(len(steps), start))
    side = torch.load(online / "checkpoint.pt", weights_only=True)["setup"]["side"]
    for name, value in ours.items():
        torch.testing.assert_close(value, side["averages"][name], rtol=0, atol=1e-6)
    rows = evaluate_run(run, grid={"lawa_windows": [1], "half_lives": [10.0]}, progress=False)
    swa = next(r for r in rows if r["family"] == "swa" and r["value"] == 2.0)
    assert swa["test_acc"] == pytest.approx(online_summary["final_test_acc"], abs=100 / 200 + 1e-9)  # one image


def test_post_hoc_ema_from_every_step_snapshots_equals_the_online_ema_run(tmp_path):
    decay = 0.9
    run, _ = digits(tmp_path, "sgd", snapshot_every=1)
    online, online_summary = digits(tmp_path, "ema", method="ema", ema_decay=decay)
    steps = snapshots.taken(run)
    series = [snapshots.read(run, s)["params"] for s in steps]
    ours = combine(series.__getitem__, ema_weights(steps, decay, steps.index(11)))  # the first fold: after the start
    side = torch.load(online / "checkpoint.pt", weights_only=True)["setup"]["side"]
    for name, value in ours.items():
        torch.testing.assert_close(value, side["averages"][name], rtol=1e-5, atol=1e-6)
    half_life = math.log(0.5) / math.log(decay)
    rows = evaluate_run(run, grid={"lawa_windows": [1], "half_lives": [half_life]}, progress=False)
    ema = next(r for r in rows if r["family"] == "ema")
    assert ema["test_acc"] == pytest.approx(online_summary["final_test_acc"], abs=100 / 200 + 1e-9)


# ---- the snapshots of a resumed run ------------------------------------------------------------------------------
def test_a_resumed_run_continues_the_series_with_no_gap_and_no_duplicate(tmp_path, monkeypatch):
    import rbwa.training.loop as t

    straight, _ = digits(tmp_path, "straight", snapshots_per_epoch=3)
    cfg = make_config(dataset="digits", width=0.0625, epochs=4, start_epoch=1, batch_size=32, train_subset=320,
                      test_subset=200, snapshots_per_epoch=3, out=str(tmp_path / "killed"))
    real = t.write_metrics
    run = tmp_path / "killed"

    def killed_in_epoch_3(out, metrics):
        if metrics[-1]["epoch"] == 2:
            shutil.copy(run / "checkpoint.pt", tmp_path / "epoch2.pt")
        if metrics[-1]["epoch"] == 3:
            raise SystemExit("killed")
        real(out, metrics)

    monkeypatch.setattr(t, "write_metrics", killed_in_epoch_3)
    with pytest.raises(SystemExit):
        train(cfg, progress=False, log=lambda line: None)
    shutil.copy(tmp_path / "epoch2.pt", run / "checkpoint.pt")  # killed before epoch 3's checkpoint was written
    monkeypatch.setattr(t, "write_metrics", real)
    assert snapshots.taken(run) == snapshots.snapshot_steps(10, 3, per_epoch=3)  # epoch 3's, ahead of the checkpoint

    def killed_at_once(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(t, "train_epoch", killed_at_once)
    with pytest.raises(SystemExit):  # the resumed run drops what lies ahead of its checkpoint before it trains
        train(cfg, resume=True, progress=False, log=lambda line: None)
    assert snapshots.taken(run) == snapshots.snapshot_steps(10, 2, per_epoch=3)
    monkeypatch.undo()
    train(cfg, resume=True, progress=False, log=lambda line: None)
    assert snapshots.taken(tmp_path / "killed") == snapshots.taken(straight) == snapshots.snapshot_steps(10, 4,
                                                                                                        per_epoch=3)
    for s in snapshots.taken(straight):
        a, b = snapshots.read(straight, s), snapshots.read(tmp_path / "killed", s)
        assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])


# ---- the command ------------------------------------------------------------------------------------------------
def test_rbwa_posthoc_on_a_smoke_run_writes_its_table_and_figure(tmp_path, capsys):
    run, summary = digits(tmp_path, "sgd", snapshots_per_epoch=2, snapshot_dtype="bfloat16")
    assert snapshots.read(run, 20)["params"]["stem.0.weight"].dtype == torch.bfloat16
    assert main(["posthoc", str(run), "--quiet", "--half-lives", "5", "20"]) == 0
    table = (run / "posthoc" / "posthoc.md").read_text()
    final = next(r for r in read_results(run) if r["label"] == "LAWA, last 1 epoch ends")
    assert (f"is compared with the final weights (the last snapshot alone, evaluated like every candidate): "
            f"{final['test_acc']:.2f}% test accuracy, test loss {final['test_loss']:.4f}. The run itself recorded "
            f"{summary['final_test_acc']:.2f}% for its final live weights (BatchNorm statistics as trained).") in table
    assert "| swa | SWA from epoch 1.5 | 6 |" in table and "| ema | EMA, half-life 20 steps | 6 |" in table
    assert (run / "posthoc" / "posthoc.png").stat().st_size > 0
    rows = (run / "posthoc" / "posthoc.csv").read_text().splitlines()
    assert rows[0] == "family,value,label,test_acc,test_loss,snapshots,first_step,last_step,bn_images"
    assert len(rows) == 1 + 6 + 3 + 2  # a header, SWA from 6 snapshots, 3 LAWA windows, 2 EMAs
    assert {r.split(",")[-1] for r in rows[1:]} == {str(summary["train_size"])}  # every training image, by default
    assert f"BatchNorm re-estimated on {summary['train_size']} training images," in table
    assert main(["posthoc", str(run), "--quiet", "--lawa", "2", "--half-lives", "5", "--bn-images", "30"]) == 0
    assert "BatchNorm re-estimated on 30 training images," in (run / "posthoc" / "posthoc.md").read_text()
    # the final weights alone (a window of 1) are always evaluated: the baseline every candidate is compared with
    assert [r["label"] for r in read_results(run) if r["family"] == "lawa"] == ["LAWA, last 1 epoch ends",
                                                                               "LAWA, last 2 epoch ends"]


def test_an_online_average_is_named_for_what_it_is_not_the_final_weights(tmp_path):
    """An ema run records its online average's accuracy as its final one: post-hoc candidates are compared with the
    last snapshot's own row, and the recorded number is named as the average's."""
    run, summary = digits(tmp_path, "ema", method="ema", snapshots_per_epoch=1)
    assert main(["posthoc", str(run), "--quiet", "--half-lives", "5"]) == 0
    table = (run / "posthoc" / "posthoc.md").read_text()
    final = next(r for r in read_results(run) if r["label"] == "LAWA, last 1 epoch ends")
    assert f"(the last snapshot alone, evaluated like every candidate): {final['test_acc']:.2f}%" in table
    assert f"recorded {summary['final_test_acc']:.2f}% for its online side average (ema)." in table
    assert "own final weights" not in table


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: digits(tmp, "rbwa", method="rbwa", snapshots_per_epoch=1)[0],
     "trained rbwa, which writes its average back into the weights it trains"),
    (lambda tmp: digits(tmp, "plain")[0], "has no snapshots; train it with --snapshot-every N"),
    (lambda tmp: tmp / "nothing", "holds no readable config.json: not a run directory"),
])
def test_bad_runs_are_refused_in_one_line(tmp_path, capsys, make, message):
    run = make(tmp_path)
    capsys.readouterr()
    assert main(["posthoc", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (run / "posthoc").exists()


def test_a_run_on_an_image_folder_needs_that_folder(tmp_path, capsys):
    from folder_data import make_folder

    folder = make_folder(tmp_path / "data", per_class=8)
    run, _ = digits(tmp_path, "run", dataset=f"folder:{folder}", cache_dir=str(tmp_path / "cache"), train_subset=None,
                    test_subset=None, batch_size=4, snapshots_per_epoch=1)
    capsys.readouterr()
    assert main(["posthoc", str(run), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "give its folder with --dataset folder:PATH" in capsys.readouterr().err
    other = make_folder(tmp_path / "other", per_class=7)
    assert main(["posthoc", str(run), "--quiet", "--dataset", f"folder:{other}", "--cache-dir",
                 str(tmp_path / "cache")]) == 2
    assert f"but {run} trained on folder:data" in capsys.readouterr().err
    assert main(["posthoc", str(run), "--quiet", "--dataset", f"folder:{folder}", "--cache-dir",
                 str(tmp_path / "cache")]) == 0


def test_posthoc_evaluates_a_language_models_snapshots_with_nothing_to_re_estimate(tmp_path):
    """A tiny GPT on a small text: every candidate's validation loss, no BatchNorm (bn_images 0), the final weights
    alone equal to the run's own last evaluation."""
    from rbwa.training.config import make_config

    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 60)
    cfg = make_config(dataset=f"text:{text}", model="gpt", context=16, layers=1, heads=2, embedding=16,
                      optimizer="adamw", lr=3e-3, batch_size=16, epochs=3, start_epoch=1, eval_batch_size=64,
                      snapshots_per_epoch=3, out=str(tmp_path / "gpt"))
    summary = train(cfg, progress=False, log=lambda line: None)
    assert main(["posthoc", str(tmp_path / "gpt"), "--quiet"]) == 2  # the text file's path is not recorded
    assert main(["posthoc", str(tmp_path / "gpt"), "--dataset", f"text:{text}", "--quiet", "--half-lives", "3"]) == 0
    rows = read_results(tmp_path / "gpt")
    assert {r["bn_images"] for r in rows} == {"0"}
    final = next(r for r in rows if r["label"] == "LAWA, last 1 epoch ends")
    assert final["test_loss"] == pytest.approx(summary["final_test_loss"], rel=1e-5)  # nothing re-estimated
    table = (tmp_path / "gpt" / "posthoc" / "posthoc.md").read_text()
    assert "nothing re-estimated (the model has no BatchNorm)" in table
    # a language model's measure comes first and is named as such: validation loss in nats, next-character accuracy
    assert f"validation loss {float(final['test_loss']):.4f} nats, " in table and "test accuracy" not in table
    assert ("| family | candidate | snapshots | validation loss (nats) | vs the final weights | next-character acc"
            in table)
    assert f"| lawa | LAWA, last 1 epoch ends | 1 | {float(final['test_loss']):.4f} | +0.0000 |" in table


def test_wsm_and_power_families_are_evaluated_when_asked_and_linear_wsm_is_the_uniform_mean(tmp_path, capsys):
    """`rbwa posthoc --families ... wsm power`: every WSM shape and window and every power EMA is a row; WSM with a
    linear decay over the last k intervals is the uniform mean of the last k snapshots, which SWA from the k-th
    last snapshot also is: the two rows agree exactly."""
    run, _ = digits(tmp_path, "sgd", snapshots_per_epoch=2)  # 10 steps an epoch, 4 epochs: 8 snapshots
    assert main(["posthoc", str(run), "--families", "swa", "wsm", "power", "--wsm-windows", "2", "3",
                 "--gammas", "3", "15", "--quiet"]) == 0
    rows = read_results(run)
    assert {r["family"] for r in rows} == {"swa", "lawa", "wsm", "power"}  # lawa: the final weights alone
    assert [r["label"] for r in rows if r["family"] == "lawa"] == ["LAWA, last 1 epoch ends"]
    assert sorted(r["label"] for r in rows if r["family"] == "wsm") == sorted(
        f"WSM {shape}, last {k} snapshot intervals" for shape in ("linear", "cosine", "1-sqrt") for k in (2, 3))
    assert [r["value"] for r in rows if r["family"] == "power"] == [3.0, 15.0]
    wsm = next(r for r in rows if r["label"] == "WSM linear, last 3 snapshot intervals")
    swa = next(r for r in rows if r["family"] == "swa" and r["value"] == 2.5)  # snapshots at epochs 2.5, 3, 3.5, 4
    swa3 = next(r for r in rows if r["family"] == "swa" and r["value"] == 3.0)  # the last 3: epochs 3, 3.5, 4
    assert wsm["snapshots"] == swa3["snapshots"] == "3" and swa["snapshots"] == "4"
    assert (wsm["test_acc"], wsm["test_loss"]) == (swa3["test_acc"], swa3["test_loss"])
    assert swa["test_loss"] != swa3["test_loss"]
    assert main(["posthoc", str(run), "--families", "bogus"]) == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["posthoc", str(run), "--families", "power", "--gammas", "nan"]) == 2
    assert "--gammas takes numbers > 0, got [nan]" in capsys.readouterr().err
    assert main(["posthoc", str(run), "--families", "wsm", "--wsm-windows", "2", "100"]) == 2
    assert "--wsm-windows 100: the run has 5 snapshot intervals after its start epoch" in capsys.readouterr().err
