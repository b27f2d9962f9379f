"""rbwa merge's formats: each format's checkpoints merge into one that its own loader reads, without rbwa."""

import warnings

import pytest
import torch
from merge_helpers import _cli, _hf_checkpoint, _value

from rbwa.checkpoints.merge import merge


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
