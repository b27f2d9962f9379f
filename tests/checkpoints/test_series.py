"""rbwa merge's series: checkpoints ordered by the step they record or their names state; what cannot be ordered
is refused in one line."""

import shutil

import pytest
import torch
from merge_helpers import _cli, _hf_checkpoint, _one_error, _state, _value


def test_an_hf_output_dir_is_ordered_by_step_not_by_name_and_one_without_a_step_is_refused(tmp_path, capsys):
    """Defect 1: checkpoint-500/1000/1500 and final/ (trainer.save_model) were taken in text order (1000, 1500, 500,
    final), so --lawa 3 averaged 1500, 500 and final."""
    out = tmp_path / "out"
    for step in (500, 1000, 1500):
        _hf_checkpoint(out / f"checkpoint-{step}", step)
    _hf_checkpoint(out / "final", 7)
    code, _, err = _cli(capsys, out, "--lawa", "3", "--out", tmp_path / "m")
    _one_error(code, err, r"out/final: no step recorded in it, .* name the checkpoints oldest first with --in-order")
    assert not (tmp_path / "m").exists()
    code, stdout, _ = _cli(capsys, *sorted(out.glob("checkpoint-*")), "--lawa", "2", "--out", tmp_path / "m")
    assert code == 0 and "from checkpoint-1000 to checkpoint-1500" in stdout and _value(tmp_path / "m") == 1250
    code, _, _ = _cli(capsys, out / "checkpoint-1000", out / "checkpoint-1500", out / "final", "--in-order", "--lawa",
                      "2", "--out", tmp_path / "given")
    assert code == 0 and _value(tmp_path / "given") == (1500 + 7) / 2
    code, _, err = _cli(capsys, *sorted(out.glob("checkpoint-*")), "--in-order", "--swa-from", "500", "--out",
                        tmp_path / "x")
    _one_error(code, err, r"need the step of every checkpoint, unknown here \(--in-order .*\); use --lawa K")
    shutil.rmtree(out / "final")
    _hf_checkpoint(out / "best", 2000, global_step=2000)  # the step the Trainer recorded, not a name's
    code, stdout, _ = _cli(capsys, out, "--lawa", "3", "--out", tmp_path / "best")
    assert code == 0 and "from checkpoint-1000 to best" in stdout and _value(tmp_path / "best") == 1500


def test_names_order_a_series_only_where_they_state_the_step(tmp_path, capsys):
    """Defect 1: model_9, model_10, model_final --lawa 2 gave 10.0; step500-loss2.31 ... were steps 31, 62, 87, so
    --ema-half-life 500 gave 557.66 where the steps give 1125."""
    folder = tmp_path / "named"
    folder.mkdir()
    for name, value in (("model_9", 9), ("model_10", 10), ("model_final", 99)):
        torch.save(_state(value), folder / f"{name}.pt")
    code, _, err = _cli(capsys, folder, "--lawa", "2", "--out", tmp_path / "a.pt")
    _one_error(code, err, r"model_final.pt: no step recorded in it, nor one its name states")
    code, _, _ = _cli(capsys, folder / "model_10.pt", folder / "model_9.pt", "--lawa", "2", "--out", tmp_path / "b.pt")
    assert code == 0 and _value(tmp_path / "b.pt") == 9.5
    code, _, _ = _cli(capsys, folder / "model_9.pt", folder / "model_10.pt", folder / "model_final.pt", "--in-order",
                      "--lawa", "2", "--out", tmp_path / "c.pt")
    assert code == 0 and _value(tmp_path / "c.pt") == (10 + 99) / 2
    code, _, _ = _cli(capsys, folder, "--lawa", "3", "--out", tmp_path / "all.pt")  # the mean of all: any order
    assert code == 0 and _value(tmp_path / "all.pt") == pytest.approx((9 + 10 + 99) / 3)
    losses = tmp_path / "losses"
    losses.mkdir()
    for step, loss in ((500, "2.31"), (1000, "1.87"), (1500, "1.62")):
        torch.save(_state(step), losses / f"step{step}-loss{loss}.pt")
    code, _, _ = _cli(capsys, losses, "--ema-half-life", "500", "--out", tmp_path / "ema.pt")
    assert code == 0 and _value(tmp_path / "ema.pt") == pytest.approx(500 / 4 + 1000 / 4 + 1500 / 2)  # 1125


def test_what_a_series_order_cannot_be_is_refused_in_one_line(tmp_path, capsys):
    """Defect 1: two checkpoints at one step, names whose only numbers may count different things, epochs, and
    --in-order given a folder."""
    for folder, name in (("a", "step-10"), ("b", "step-10"), ("c", "run_1"), ("c", "net_2"), ("d", "epoch=3"),
                         ("d", "epoch=4")):
        (tmp_path / folder).mkdir(exist_ok=True)
        torch.save(_state(1), tmp_path / folder / f"{name}.pt")
    code, _, err = _cli(capsys, tmp_path / "a", tmp_path / "b", "--lawa", "1", "--out", tmp_path / "o.pt")
    _one_error(code, err, r"a/step-10.pt and .*b/step-10.pt were both saved at step 10: not one series")
    code, _, err = _cli(capsys, tmp_path / "c", "--lawa", "1", "--out", tmp_path / "o.pt")
    _one_error(code, err, r"net_2.pt and run_1.pt: the numbers in their names are not marked as steps")
    code, _, err = _cli(capsys, tmp_path / "d", "--lawa", "1", "--out", tmp_path / "o.pt")
    _one_error(code, err, r"epoch=3.pt: no step recorded in it")
    code, _, err = _cli(capsys, tmp_path / "a", "--in-order", "--lawa", "1", "--out", tmp_path / "o.pt")
    _one_error(code, err, r"--in-order takes the checkpoints one by one, oldest first, and .*a is a folder of them")
    code, _, err = _cli(capsys, tmp_path / "a" / "step-10.pt", tmp_path / "a", "--lawa", "1", "--out",
                        tmp_path / "o.pt")
    _one_error(code, err, r"step-10.pt is given twice")
    assert not (tmp_path / "o.pt").exists()


def test_lightning_checkpoints_and_rbwa_snapshots_are_ordered_by_the_step_they_record(tmp_path, capsys):
    """Defect 1: the step a format records wins over any name (Lightning's global_step, a snapshot's step), and a
    snapshot is known by what it holds, in any folder under any name."""
    from rbwa.checkpoints import snapshots

    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name, step in (("a", 30), ("b", 10), ("c", 20)):
        torch.save({"state_dict": _state(step), "global_step": step, "optimizer_states": [{"m": 1}],
                    "pytorch-lightning_version": "2.6.0"}, folder / f"{name}.ckpt")
    code, stdout, _ = _cli(capsys, folder, "--lawa", "2", "--out", tmp_path / "l.ckpt")
    assert code == 0 and "from c.ckpt to a.ckpt" in stdout and _value(tmp_path / "l.ckpt") == 25
    saved = torch.load(tmp_path / "l.ckpt", weights_only=True)
    assert saved["global_step"] == 30 and "optimizer_states" not in saved
    anywhere = tmp_path / "anywhere"
    for name, step in (("x", 30), ("y", 10), ("z", 20)):
        layer = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(layer.weight, step)
        torch.nn.init.constant_(layer.bias, step)
        snapshots.store(layer, anywhere, step)
        (anywhere / f"{step:08d}.pt").rename(anywhere / f"{name}.pt")
    code, stdout, _ = _cli(capsys, anywhere, "--lawa", "2", "--out", tmp_path / "s.pt")
    assert code == 0 and stdout.startswith("LAWA, last 2 checkpoints: 2 of 3 rbwa checkpoints, from z.pt to x.pt")
    merged = torch.load(tmp_path / "s.pt", weights_only=True)
    assert all(torch.equal(t, torch.full_like(t, 25.0)) for t in merged.values()) and set(merged) == {"weight", "bias"}


def test_an_hf_output_dir_with_its_final_model_merges_its_checkpoints_and_says_so(tmp_path, capsys):
    """Defect 2: model.safetensors beside checkpoint-N/ made the output_dir one checkpoint (its final model)."""
    out = tmp_path / "out"
    for step in (100, 200, 300):
        _hf_checkpoint(out / f"checkpoint-{step}", step, global_step=step)
    from safetensors.torch import save_file

    save_file(_state(1000), out / "model.safetensors")
    (out / "config.json").write_text("{}")
    code, stdout, _ = _cli(capsys, out, "--swa-from", "200", "--out", tmp_path / "swa")
    lines = stdout.strip().splitlines()
    assert code == 0 and lines[0].startswith("SWA from step 200: 2 of 3 hf checkpoints") and len(lines) == 2
    assert lines[1] == (f"note: {out} holds a model of its own (model.safetensors) beside its checkpoint folders; it "
                        "records no step, so it is not part of the series (to average it too, name the checkpoints "
                        "and then it with --in-order)")
    assert _value(tmp_path / "swa") == 250
    code, _, _ = _cli(capsys, out / "checkpoint-200", out / "checkpoint-300", out, "--in-order", "--lawa", "2", "--out",
                      tmp_path / "with-final")
    assert code == 0 and _value(tmp_path / "with-final") == (300 + 1000) / 2


def test_a_merge_output_left_in_the_input_folder_is_never_taken_for_a_checkpoint(tmp_path, capsys):
    """Review: `rbwa merge ck --lawa 2 --out ck/lawa2.pt`, then `rbwa merge ck --ema-half-life 10`, took lawa2.pt
    for the checkpoint at step 2 (24.65 where the series gives 22.5); beside checkpoints named step-N it has no
    step, and every average refuses it, the mean of the whole series too."""
    folder = tmp_path / "ck"
    folder.mkdir()
    for step in (10, 20, 30):
        torch.save(_state(step), folder / f"step-{step}.pt")
    code, _, _ = _cli(capsys, folder, "--lawa", "2", "--out", folder / "lawa2.pt")
    assert code == 0
    for argv in (["--ema-half-life", "10"], ["--lawa", "4"], ["--swa-from", "0"]):
        code, _, err = _cli(capsys, folder, *argv, "--out", tmp_path / "again.pt")
        _one_error(code, err, r"lawa2.pt: no step recorded in it, nor one its name states beside checkpoints that "
                              r"record or mark theirs \(step-N\) \(a bare number is not taken for one\)")
    (folder / "lawa2.pt").unlink()
    code, _, _ = _cli(capsys, folder, "--ema-half-life", "10", "--out", tmp_path / "ema.pt")
    assert code == 0 and _value(tmp_path / "ema.pt") == pytest.approx(22.5)  # 10/4 + 20/4 + 30/2
