"""rbwa merge: post-hoc averages of checkpoints in every format users have, written back loadable without rbwa."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from rbwa.checkpoints.merge import candidates, merge
from rbwa.cli import main
from rbwa.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _plain_series(folder, steps=(10, 20, 30, 40)):
    """State dicts whose float tensor is the step itself, so every average is a number computable by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in steps:
        torch.save({"w": torch.full((2, 3), float(s)), "half": torch.full((2,), float(s), dtype=torch.float16),
                    "count": torch.tensor(s)}, folder / f"step-{s}.pt")
    return folder


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


def test_hugging_face_checkpoints_with_a_tied_head_merge_into_a_folder_from_pretrained_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    states = []
    for step in (2, 4, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(tmp_path / "out" / f"checkpoint-{step}")
        (tmp_path / "out" / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"trainer state, not the model's")
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    merge([tmp_path / "out"], tmp_path / "merged", lawa=2)
    assert not (tmp_path / "merged" / "optimizer.pt").exists()
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # the tie holds
    for name, p in loaded.state_dict().items():
        if p.is_floating_point():
            assert torch.allclose(p, (states[1][name] + states[2][name]) / 2, atol=1e-7), name


def test_lightning_checkpoints_of_a_cnn_merge_into_a_ckpt_load_from_checkpoint_reads(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    class TinyCNN(pl.LightningModule):
        """A convolution and BatchNorm: float buffers averaged, num_batches_tracked the last checkpoint's."""

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                           torch.nn.Flatten(), torch.nn.Linear(64, 3))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    model = TinyCNN()
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 6, 6), torch.randint(0, 3, (16,)))
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=-1,
                                               filename="{step}")
    trainer = pl.Trainer(max_steps=6, callbacks=[checkpoints], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    files = sorted((tmp_path / "ckpts").glob("*.ckpt"))
    assert [f.name for f in files] == ["step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]
    states = [torch.load(f, weights_only=True)["state_dict"] for f in files]
    merge([tmp_path / "ckpts"], tmp_path / "swa.ckpt", swa_from=4)
    loaded = TinyCNN.load_from_checkpoint(tmp_path / "swa.ckpt")
    for name, t in loaded.state_dict().items():
        expected = (states[1][name].double() + states[2][name].double()) / 2 if t.is_floating_point() \
            else states[2][name]
        assert torch.allclose(t.double(), expected.double()), name
    assert "optimizer_states" not in torch.load(tmp_path / "swa.ckpt", weights_only=True)


def test_rbwa_snapshots_merge_into_a_state_dict_the_model_loads(tmp_path, tiny_resnet):
    from rbwa.checkpoints import snapshots

    model = tiny_resnet()
    for step in (5, 10, 15):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        snapshots.write(tmp_path / "run", step, 5, model)
    merge([tmp_path / "run"], tmp_path / "avg.pt", lawa=2)
    model.load_state_dict(torch.load(tmp_path / "avg.pt", weights_only=True))
    assert all(torch.equal(p, torch.full_like(p, 12.5)) for p in model.parameters())


def test_distributed_checkpoints_merge_into_one_that_dcp_load_reads(tmp_path):
    """torch.distributed.checkpoint folders as get_state_dict leaves them ({"model", "optim"}) and as Lightning's
    ModelParallelStrategy does ({"state_dict", "optimizer_0"} with meta.pt): weights by hand, the optimizer state
    dropped, and the merged folder loads into a fresh GPT with dcp.load in one process."""
    import torch.distributed.checkpoint as dcp

    from rbwa.models.gpt import GPT

    def gpt(fill: float) -> GPT:
        torch.manual_seed(0)
        model = GPT(vocab=6, context=4, layers=1, heads=2, width=8)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
        return model

    for key in ("model", "state_dict"):
        folder = tmp_path / key
        for step in (100, 200, 300):
            model = gpt(step)
            state = {key: model.state_dict(), ("optim" if key == "model" else "optimizer_0"): {"lr": 0.1}}
            dcp.save(state, checkpoint_id=str(folder / f"step-{step}"), no_dist=True)
            if key == "state_dict":
                torch.save({"global_step": step // 10, "loops": {"fit": 1}, "hyper_parameters": {"width": 8}},
                           folder / f"step-{step}" / "meta.pt")
        swa_from = 20 if key == "state_dict" else 200  # Lightning's step comes from meta.pt, not the folder's name
        merge([folder], tmp_path / f"{key}-swa", swa_from=swa_from)
        fresh = gpt(0)
        loaded = {key: fresh.state_dict()}
        dcp.load(loaded, checkpoint_id=str(tmp_path / f"{key}-swa"), no_dist=True)
        fresh.load_state_dict(loaded[key])
        assert all(torch.equal(p, torch.full_like(p, 250.0)) for p in fresh.parameters())
        assert torch.equal(fresh.head.weight, fresh.tokens.weight)  # tied in the model, one tensor in the file
        if key == "state_dict":
            meta = torch.load(tmp_path / "state_dict-swa" / "meta.pt", weights_only=True)
            assert meta == {"global_step": 30, "hyper_parameters": {"width": 8}}
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        with pytest.raises(CheckpointException, match="Missing key in checkpoint state_dict: optim"):  # none written
            dcp.load({"optim" if key == "model" else "optimizer_0": {"lr": torch.tensor(0.0)}},
                     checkpoint_id=str(tmp_path / f"{key}-swa"), no_dist=True)


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


# ---- the outside review of 111af0e: each defect, at the command line where it can be ----

def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["merge", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code: int, err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def _value(path: Path) -> float:
    """The merged "w" (every entry the same number), from a torch file or an HF folder."""
    if path.is_dir():
        from safetensors.torch import load_file

        w = load_file(path / "model.safetensors")["w"]
    else:
        found = torch.load(path, weights_only=True)
        w = found["state_dict"]["w"] if "state_dict" in found else found["w"]
    assert torch.equal(w, torch.full_like(w, w.flatten()[0].item()))
    return w.flatten()[0].item()


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), float(value), dtype=torch.float64), "count": torch.tensor(int(value))}


def _hf_checkpoint(folder: Path, value: float, global_step: int | None = None) -> Path:
    """An HF checkpoint folder as the Trainer leaves it: the model's files beside the trainer's and a callback's."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file(_state(value), folder / "model.safetensors")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        (folder / name).write_text("{}")
    (folder / "merges.txt").write_text("a b\n")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "rbwa_callback.pt"):
        torch.save({"state": 1}, folder / name)
    if global_step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": global_step}))
    return folder


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


def test_a_merged_hf_folder_keeps_the_model_files_and_no_trainer_or_callback_state(tmp_path, capsys):
    """Defect 16: rbwa_callback.pt (the callback's state) was copied into the merged model folder."""
    for step in (1, 2):
        _hf_checkpoint(tmp_path / "out" / f"checkpoint-{step}", step, global_step=step)
    code, _, _ = _cli(capsys, tmp_path / "out", "--lawa", "2", "--out", tmp_path / "merged")
    assert code == 0 and _value(tmp_path / "merged") == 1.5
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [
        "config.json", "generation_config.json", "merges.txt", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]


def test_a_tied_gpts_snapshots_merge_into_its_whole_state_dict(tmp_path):
    """Defect 9: the snapshot's tied head.weight was dropped, so a strict load_state_dict failed."""
    from rbwa.checkpoints import snapshots
    from rbwa.models.gpt import GPT

    model = GPT(vocab=6, context=4, layers=1, heads=2, width=8)
    for step in (10, 20, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        snapshots.store(model, tmp_path / "snaps", step)
    merge([tmp_path / "snaps"], tmp_path / "avg.pt", lawa=2)
    merged = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert set(merged) == set(model.state_dict()) and "head.weight" in merged
    fresh = GPT(vocab=6, context=4, layers=1, heads=2, width=8)
    fresh.load_state_dict(merged)  # strict
    assert all(torch.equal(p, torch.full_like(p, 25.0)) for p in fresh.parameters())
    assert fresh.head.weight is fresh.tokens.weight


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


def test_a_distributed_checkpoint_of_top_level_model_names_merges_back_the_same(tmp_path, capsys):
    """Defect 11: dcp.save(model.state_dict()) of an HF-style model (top-level names model.*) crashed with
    KeyError: 'model'; defect 16: and torch's "torch.distributed is disabled" warning was printed."""
    import torch.distributed.checkpoint as dcp

    class HfStyle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Linear(3, 4)
            self.lm_head = torch.nn.Linear(4, 2)

    for step in (100, 200, 300):
        net = HfStyle()
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(step))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(net.state_dict(), checkpoint_id=str(tmp_path / "dcp" / f"step-{step}"), no_dist=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, stdout, err = _cli(capsys, tmp_path / "dcp", "--swa-from", "200", "--out", tmp_path / "merged")
    assert code == 0 and stdout.startswith("SWA from step 200: 2 of 3 dcp checkpoints"), err
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)]
    fresh = HfStyle()
    state = fresh.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(tmp_path / "merged"), no_dist=True)  # the same top-level names
    fresh.load_state_dict(state)
    assert all(torch.equal(p, torch.full_like(p, 250.0)) for p in fresh.parameters())


def _fail_midway(target) -> None:
    """A write that fills part of its file (an open file, or a path) and then finds the disk full."""
    if hasattr(target, "write"):
        target.write(b"partial")
    else:
        Path(target).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


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


def test_a_power_ema_of_a_series_that_ends_at_step_0_is_refused(tmp_path, capsys):
    """Review: a lone step-0 checkpoint with --power-gamma wrote a NaN model, exit 0."""
    torch.save(_state(1.0), tmp_path / "step-0.pt")
    code, _, err = _cli(capsys, tmp_path / "step-0.pt", "--power-gamma", "1", "--out", tmp_path / "p.pt")
    _one_error(code, err, "the last after step 0")
    assert not (tmp_path / "p.pt").exists()
