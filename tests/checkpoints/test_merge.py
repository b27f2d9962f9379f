"""rbwa merge: post-hoc averages of checkpoints in every format users have, written back loadable without rbwa."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from merge_helpers import _cli, _fail_midway, _hf_checkpoint, _one_error, _plain_series, _state, _value

from rbwa.checkpoints.merge import candidates, merge
from rbwa.cli import main
from rbwa.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_plain_state_dicts_by_hand(tmp_path):
    series = _plain_series(tmp_path / "ckpts")
    merge([series], tmp_path / "lawa.pt", lawa=2)
    lawa = torch.load(tmp_path / "lawa.pt", weights_only=True)
    assert torch.equal(lawa["w"], torch.full((2, 3), 35.0)) and lawa["half"].dtype == torch.float16
    assert lawa["count"].item() == 40  # not a float: the last checkpoint's
    merge([series], tmp_path / "swa.pt", swa_from=15)
    assert torch.equal(torch.load(tmp_path / "swa.pt", weights_only=True)["w"], torch.full((2, 3), 30.0))
    # half-life 10 steps, checkpoints 10 apart: each enters with weight 1/2, so 10/8 + 20/8 + 30/4 + 40/2
    merge([series], tmp_path / "ema.pt", ema_half_life=10)
    assert torch.load(tmp_path / "ema.pt", weights_only=True)["w"][0, 0].item() == pytest.approx(31.25)
    found = candidates([series], swa_from=[15], lawa=[2])
    assert set(found) == {"SWA from step 20", "LAWA, last 2 checkpoints"}
    assert torch.equal(found["LAWA, last 2 checkpoints"]["w"], lawa["w"])


def test_snapshots_on_rounded_steps_are_evenly_spaced(tmp_path):
    """4 snapshots an epoch of 782 steps fall on steps 195, 391, 586, 782, ...: spacings of 195 and 196 steps are one
    even spacing, rounded, so LAWA and SWA take them (they were refused as a gap)."""
    series = _plain_series(tmp_path / "rounded", steps=(195, 391, 586, 782, 977))
    merge([series], tmp_path / "lawa.pt", lawa=4)
    assert torch.load(tmp_path / "lawa.pt", weights_only=True)["w"][0, 0].item() == pytest.approx(
        (391 + 586 + 782 + 977) / 4)
    with pytest.raises(UserError, match="not evenly spaced \\(every 195 steps, but 197 after step 782\\)"):
        merge([_plain_series(tmp_path / "gap", steps=(195, 391, 586, 782, 979))], tmp_path / "x.pt", lawa=5)


def test_what_merge_refuses_in_one_line_before_writing(tmp_path):
    series = _plain_series(tmp_path / "gappy", steps=(10, 20, 40))
    with pytest.raises(UserError, match="not evenly spaced \\(every 10 steps, but 20 after step 20\\)"):
        merge([series], tmp_path / "a.pt", swa_from=10)
    merge([series], tmp_path / "ema.pt", ema_half_life=10)  # an EMA weights by steps: a gap is no harm
    with pytest.raises(UserError, match="choose one average"):
        merge([series], tmp_path / "b.pt", lawa=2, swa_from=10)
    with pytest.raises(UserError, match="--lawa 4: the series holds 3 checkpoints"):
        merge([series], tmp_path / "b.pt", lawa=4)
    with pytest.raises(UserError, match="exists; choose a new path"):
        merge([series], tmp_path / "ema.pt", lawa=1)
    torch.save({"w": torch.zeros(3, 3), "half": torch.zeros(2, dtype=torch.float16), "count": torch.tensor(0)},
               series / "step-50.pt")
    with pytest.raises(UserError, match=r"step-50.pt: w is \(3, 3\) torch.float32, but \(2, 3\) torch.float32 in"):
        merge([series], tmp_path / "c.pt", lawa=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no checkpoints"):
        merge([tmp_path / "empty"], tmp_path / "d.pt", lawa=1)
    (tmp_path / "dcp").mkdir()
    (tmp_path / "dcp" / ".metadata").write_bytes(b"")
    with pytest.raises(UserError, match="dcp: its torch.distributed.checkpoint metadata is not readable"):
        merge([tmp_path / "dcp"], tmp_path / "e.pt", lawa=1)
    assert not any((tmp_path / name).exists() for name in ("a.pt", "b.pt", "c.pt", "d.pt", "e.pt"))


def test_the_command_prints_what_it_averaged_and_bad_input_exits_2(tmp_path, capsys):
    series = _plain_series(tmp_path / "ckpts")
    assert main(["merge", str(series), "--lawa", "3", "--out", str(tmp_path / "m.pt")]) == 0
    assert capsys.readouterr().out.strip() == ("LAWA, last 3 checkpoints: 3 of 4 torch checkpoints, from step-20.pt "
                                               f"to step-40.pt; wrote {tmp_path / 'm.pt'}")
    assert main(["merge", str(tmp_path / "nowhere"), "--lawa", "1", "--out", str(tmp_path / "n.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such checkpoint: {tmp_path / 'nowhere'}"


def test_batchnorm_statistics_are_re_estimated_on_the_data_given_by_hand(tmp_path):
    """Two state dicts of Linear + BatchNorm merged (their running statistics averaged like any tensor), then
    re-estimated on two equal batches: the running mean is the mean, over both batches, of what the merged Linear
    gives, and the running variance the mean of the two batches' unbiased variances (update_bn's cumulative
    average); the model passed in is untouched."""
    from rbwa.checkpoints.merge import reestimate_bn

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()

    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (1, 2):
        model = net()
        with torch.no_grad():
            model[0].weight.mul_(step)
            model[1].running_mean.fill_(10.0 * step)
        torch.save(model.state_dict(), folder / f"step-{step}.pt")
    merged = candidates([folder], lawa=[2])["LAWA, last 2 checkpoints"]
    assert torch.equal(merged["1.running_mean"], torch.full((3,), 15.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g, dtype=torch.float64), torch.zeros(8)) for _ in range(2)]
    model = net()
    state = reestimate_bn(model, merged, batches)
    linear = torch.nn.Linear(4, 3).double()
    linear.load_state_dict({"weight": merged["0.weight"], "bias": merged["0.bias"]})
    with torch.no_grad():
        outs = [linear(x) for x, _ in batches]
    torch.testing.assert_close(state["1.running_mean"], torch.cat(outs).mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(state["1.running_var"], (outs[0].var(0) + outs[1].var(0)) / 2, rtol=0, atol=1e-12)
    assert torch.equal(state["0.weight"], merged["0.weight"])
    assert torch.equal(model[1].running_mean, torch.zeros(3, dtype=torch.float64))  # the model given: untouched


def test_a_checkpoint_of_weight_0_is_never_read(tmp_path, monkeypatch):
    """Defect 10: merge read the whole series into memory; the streaming combine reads the tensors of the checkpoints
    an average uses, one at a time (the others are only mapped, to learn their format: their tensors are not read)."""
    series = _plain_series(tmp_path / "ckpts", steps=(10, 20, 30, 40, 50, 60))
    read, real = [], torch.load

    def load(f, *args, **kwargs):
        if not kwargs.get("mmap"):
            read.append(Path(f).name)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    merge([series], tmp_path / "lawa.pt", lawa=2)
    assert read == ["step-50.pt", "step-60.pt"]
    monkeypatch.undo()
    assert _value(tmp_path / "lawa.pt") == 55


def test_the_memory_benchmark_stays_flat_in_the_series_length(tmp_path):
    """Defect 10: peak memory, in fresh processes, of a streamed merge and of the series held in memory (as before),
    for 2 and 6 checkpoints of 8 MB: the streamed peak grows by less than half a checkpoint, the other by 4."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/merge_memory.py"), "--mb", "8", "--lengths", "2",
                           "6", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {int(line.split("|")[1]): [float(x) for x in line.split("|")[2:4]]
            for line in done.stdout.splitlines() if re.match(r"\| \d+ \|", line)}
    assert set(rows) == {2, 6}, done.stdout
    streamed, held = rows[6][0] - rows[2][0], rows[6][1] - rows[2][1]
    assert streamed < 4 and held > 24, done.stdout


def test_a_failed_write_leaves_nothing_and_the_same_command_then_works(tmp_path, capsys, monkeypatch):
    """Defect 12: merge wrote --out in place, so a failed write left a partial file (and a retry was refused: --out
    exists), and the OSError was a traceback."""
    import safetensors.torch

    series = _plain_series(tmp_path / "ckpts")
    for step in (1, 2):
        _hf_checkpoint(tmp_path / "out" / f"checkpoint-{step}", step)
    before = sorted(tmp_path.rglob("*"))
    plain = ["--lawa", "2", "--out", tmp_path / "new" / "deeper" / "m.pt"]
    hf = ["--lawa", "2", "--out", tmp_path / "merged"]
    monkeypatch.setattr(torch, "save", lambda obj, f, *args, **kwargs: _fail_midway(f))
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, path, *args, **kwargs: _fail_midway(path))
    for source, argv in ((series, plain), (tmp_path / "out", hf)):
        code, _, err = _cli(capsys, source, *argv)
        _one_error(code, err, r"cannot write --out .* \(No space left on device\); nothing was written: fix that and "
                              r"run the same command again$")
        assert sorted(tmp_path.rglob("*")) == before  # no partial file, no temporary, no folder made for it
    monkeypatch.undo()
    for source, argv in ((series, plain), (tmp_path / "out", hf)):
        assert _cli(capsys, source, *argv)[0] == 0
    assert _value(tmp_path / "new" / "deeper" / "m.pt") == 35 and _value(tmp_path / "merged") == 1.5


def test_the_help_says_what_lawa_counts_and_what_an_ema_does_with_the_first_checkpoint(capsys):
    """Defect 15: merge's --lawa K is the last K checkpoints, posthoc's the last K epoch ends."""
    assert main(["merge", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the uniform mean of the last K checkpoints of the series (K >= 1), whatever their spacing; not rbwa " \
           "posthoc's LAWA, which takes the last K epoch ends" in text
    assert "it starts from the first checkpoint, which stands for everything before it" in text
    assert "--in-order" in text


def test_an_ema_long_next_to_the_series_says_how_much_its_first_checkpoint_weighs(tmp_path, capsys):
    """10 checkpoints 500 steps apart, half-life 5000: the first weighs 0.5 ** 0.9 = 0.536, as an EMA started there
    does; the merge is that weighted mean, and the command says so."""
    steps = list(range(500, 5001, 500))
    series = _plain_series(tmp_path / "ckpts", steps=steps)
    code, stdout, _ = _cli(capsys, series, "--ema-half-life", "5000", "--out", tmp_path / "ema.pt")
    kept = 0.5 ** 0.1
    w = [kept ** 9] + [(1 - kept) * kept ** (9 - j) for j in range(1, 10)]
    assert code == 0 and stdout.strip().splitlines()[1] == (
        "note: the first checkpoint, step-500.pt, weighs 0.536: an EMA of a series starts from its first checkpoint, "
        "which stands for everything before it; a half-life well under the series' 4500 steps weighs it less")
    merged = torch.load(tmp_path / "ema.pt", weights_only=True)["w"][0, 0].item()
    assert merged == pytest.approx(sum(wi * s for wi, s in zip(w, steps)), rel=1e-6)


def test_wsm_and_the_power_ema_write_what_their_weights_say_by_hand(tmp_path, capsys):
    """Checkpoints at steps 100..500 holding their step. WSM cosine over the last 3 intervals: w = 1, 0.75, 0.25, so
    0.25 * 300 + 0.5 * 400 + 0.25 * 500 = 400; the power EMA with gamma 1: (s_j^2 - s_(j-1)^2) / 500^2 per
    checkpoint, 0.04 * 100 + 0.12 * 200 + 0.2 * 300 + 0.28 * 400 + 0.36 * 500 = 380."""
    folder = tmp_path / "series"
    folder.mkdir()
    for step in (100, 200, 300, 400, 500):
        torch.save(_state(step), folder / f"step-{step}.pt")
    code, out, _ = _cli(capsys, folder, "--wsm", "cosine", "--window", "3", "--out", tmp_path / "wsm.pt")
    assert code == 0 and _value(tmp_path / "wsm.pt") == pytest.approx(400) and "WSM cosine" in out
    code, _, _ = _cli(capsys, folder, "--wsm", "linear", "--window", "2", "--out", tmp_path / "linear.pt")
    assert code == 0 and _value(tmp_path / "linear.pt") == pytest.approx(450)  # the mean of the last 2
    code, out, _ = _cli(capsys, folder, "--power-gamma", "1", "--out", tmp_path / "power.pt")
    assert code == 0 and _value(tmp_path / "power.pt") == pytest.approx(380) and "power EMA, gamma 1" in out
    for argv, pattern in ((["--wsm", "cosine"], "--wsm SHAPE and --window K go together"),
                          (["--wsm", "step", "--window", "2"], "--wsm takes a decay shape: linear, cosine, 1-sqrt"),
                          (["--wsm", "linear", "--window", "5"], r"1 <= K < 5 here; got 5"),
                          (["--power-gamma", "0"], "--power-gamma needs a number > 0"),
                          (["--power-gamma", "1", "--lawa", "2"], "choose one average"),
                          (["--power-gamma", "inf"], "--power-gamma needs a number > 0")):
        code, _, err = _cli(capsys, folder, *argv, "--out", tmp_path / "never.pt")
        _one_error(code, err, pattern)
    assert not (tmp_path / "never.pt").exists()


def test_a_power_ema_of_a_series_that_ends_at_step_0_is_refused(tmp_path, capsys):
    """Review: a lone step-0 checkpoint with --power-gamma wrote a NaN model, exit 0."""
    torch.save(_state(1.0), tmp_path / "step-0.pt")
    code, _, err = _cli(capsys, tmp_path / "step-0.pt", "--power-gamma", "1", "--out", tmp_path / "p.pt")
    _one_error(code, err, "the last after step 0")
    assert not (tmp_path / "p.pt").exists()


def test_the_merge_api_where_rbwa_0_3_documented_it_still_answers_with_a_deprecation_warning():
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    from rbwa.merge import candidates, reestimate_bn\n"
            "import rbwa.checkpoints.merge as new\n"
            "assert candidates is new.candidates and reestimate_bn is new.reestimate_bn\n"
            "assert [w.category for w in seen] == [DeprecationWarning], seen\n"
            "assert 'rbwa.checkpoints.merge' in str(seen[0].message)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
