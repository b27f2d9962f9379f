"""rbwa merge: post-hoc averages of checkpoints in every format users have, written back loadable without rbwa."""

import pytest
import torch

from rbwa.cli import main
from rbwa.errors import UserError
from rbwa.merge import candidates, merge


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
    from rbwa import snapshots

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
    from rbwa.merge import reestimate_bn

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
