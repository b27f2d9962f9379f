"""The Hugging Face Trainer callback against the plain wrapper, on a tiny model built from a config (no download)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rbwa.averaging import RBWA  # noqa: E402
from rbwa.hf import RBWACallback  # noqa: E402

STATE_FILE = RBWACallback(start_epoch=1).state_file  # the callbacks of these tests: their state file


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 40, (n, 6), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def _train(tmp_path, name, callback=None, wrap=False, resume=None, save_steps=100):
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name), num_train_epochs=3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=0.0,
        weight_decay=0.0, save_strategy="steps", save_steps=save_steps, logging_strategy="no", report_to=[],
        use_cpu=True, seed=0, data_seed=0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # the plain wrapper: 24 examples, batch 4, 2 accumulated = 3 optimizer steps an epoch; start epoch 1
    optimizer = RBWA(sgd, start_step=3, **(wrap if isinstance(wrap, dict) else {})) if wrap else sgd
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(), optimizers=(optimizer, None),
                                   callbacks=[callback] if callback else [])
    trainer.train(resume_from_checkpoint=resume)
    return model, optimizer


def test_callback_equals_the_wrapper_and_folds_per_optimizer_step(tmp_path):
    callback = RBWACallback(start_epoch=1)
    with_callback, _ = _train(tmp_path, "callback", callback)
    with_wrapper, opt = _train(tmp_path, "wrapper", wrap=True)
    assert callback.steps_per_epoch == 3 and callback.folds == opt.folds == 6  # epochs 2 and 3, not 12 micro-batches
    for a, b in zip(with_callback.parameters(), with_wrapper.parameters(), strict=True):
        assert torch.equal(a, b)
    plain, _ = _train(tmp_path, "plain")
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), with_callback.parameters()))


# every member as the callback's named recipe, against the wrapper with the same settings on the same batches (3
# optimizer steps an epoch, averaging from epoch 1): RBWA-E, Lookahead's fold, Switch EMA (written back once an epoch),
# an EMA and an SWA side average, and RBWA counting epochs
RECIPES = {"rbwa-e": (lambda: RBWACallback.rbwa_e(start_epoch=1, beta=0.8), {"average": "ema", "beta": 0.8}),
           "lookahead": (lambda: RBWACallback.lookahead(k=2, alpha=0.5, start_epoch=1),
                         {"average": "ema", "beta": 0.5, "every": 2}),
           "switch ema": (lambda: RBWACallback.switch_ema(3, beta=0.8, start_epoch=1),
                          {"average": "ema", "beta": 0.8, "write_back": 3}),
           "ema": (lambda: RBWACallback.ema(beta=0.8, start_epoch=1),
                   {"average": "ema", "beta": 0.8, "write_back": None}),
           "swa": (lambda: RBWACallback.swa(3, start_epoch=1), {"every": 3, "write_back": None}),
           "rbwa, epoch counter": (lambda: RBWACallback.rbwa(1, counter="epochs"),
                                   {"counter": "epochs", "steps_per_epoch": 3})}


@pytest.mark.parametrize("member", RECIPES)
def test_every_member_of_the_family_equals_the_wrapper(tmp_path, member):
    recipe, settings = RECIPES[member]
    callback = recipe()
    with_callback, _ = _train(tmp_path, "callback", callback)
    with_wrapper, opt = _train(tmp_path, "wrapper", wrap=settings)
    assert callback.folds == opt.folds > 0
    for a, b in zip(with_callback.parameters(), with_wrapper.parameters(), strict=True):  # the live weights
        assert torch.equal(a, b)
    names = [name for name, p in with_wrapper.named_parameters() if p.requires_grad]
    for name, average in zip(names, opt.averages, strict=True):  # and the averages
        assert torch.equal(callback.averages[name], average), name


def test_resuming_from_a_checkpoint_continues_identically(tmp_path):
    straight, _ = _train(tmp_path, "straight", RBWACallback(start_epoch=1))
    _train(tmp_path, "resumed", RBWACallback(start_epoch=1), save_steps=5)
    checkpoint = tmp_path / "resumed" / "checkpoint-5"
    saved = torch.load(checkpoint / STATE_FILE, weights_only=True)
    assert saved["folds"] == 2  # after 5 optimizer steps (0..4), steps 3 and 4 have folded
    callback = RBWACallback(start_epoch=1)
    resumed, _ = _train(tmp_path, "resumed", callback, resume=str(checkpoint), save_steps=5)
    assert callback.folds == 6
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="different settings"):
        RBWACallback(start_epoch=2).load_state_dict(saved)


def test_resuming_from_a_copy_of_a_checkpoint_reads_the_state_of_that_copy(tmp_path):
    import shutil

    straight, _ = _train(tmp_path, "straight", RBWACallback(start_epoch=1))
    _train(tmp_path, "first", RBWACallback(start_epoch=1), save_steps=5)
    copy = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(tmp_path / "first" / "checkpoint-5", copy)
    shutil.rmtree(tmp_path / "first")  # the output_dir it was saved under is gone
    callback = RBWACallback(start_epoch=1)
    resumed, _ = _train(tmp_path, "second", callback, resume=str(copy), save_steps=5)
    assert callback.folds == 6  # 2 folds before the checkpoint, 4 after: averaging was not restarted
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resuming_after_averaging_began_from_a_checkpoint_without_the_state_is_refused(tmp_path):
    _train(tmp_path, "first", RBWACallback(start_epoch=1), save_steps=5)
    checkpoint = tmp_path / "first" / "checkpoint-5"
    state = torch.load(checkpoint / STATE_FILE, weights_only=True)
    (checkpoint / STATE_FILE).unlink()
    with pytest.raises(ValueError, match=f"resuming from {checkpoint} \\(step 5, after averaging began\\), but this "
                                         f"process finds no {STATE_FILE} there \\(this callback's state\\)"):
        _train(tmp_path, "second", RBWACallback(start_epoch=1), resume=str(checkpoint))
    torch.save({**state, "token": "another"}, checkpoint / STATE_FILE)  # a state from another checkpoint
    with pytest.raises(ValueError, match=f"finds that the {STATE_FILE} there belongs to another checkpoint"):
        _train(tmp_path, "second", RBWACallback(start_epoch=1), resume=str(checkpoint))


def test_a_renamed_training_loop_never_resumes_from_another_runs_state(tmp_path, monkeypatch):
    """A tool that renames Trainer._inner_training_loop hides the resumed folder: the callback then looks in
    output_dir/checkpoint-N, and an older run's state there (the same step, another token) is refused, not used."""
    import shutil

    import rbwa.hf

    _train(tmp_path, "first", RBWACallback(start_epoch=1), save_steps=5)
    copy = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(tmp_path / "first" / "checkpoint-5", copy)
    _train(tmp_path, "second", RBWACallback(start_epoch=1), save_steps=5)  # an older run in the same output_dir
    monkeypatch.setattr(rbwa.hf, "resumed_checkpoint", lambda: None)
    with pytest.raises(ValueError, match=f"resuming from {tmp_path / 'second' / 'checkpoint-5'} \\(step 5, after "
                                         f"averaging began\\), but this process finds that the {STATE_FILE} there "
                                         "belongs to another checkpoint"):
        _train(tmp_path, "second", RBWACallback(start_epoch=1), resume=str(copy), save_steps=5)
    # its own checkpoint, found in output_dir, matches its token: resumed as if uninterrupted
    straight, _ = _train(tmp_path, "straight", RBWACallback(start_epoch=1))
    callback = RBWACallback(start_epoch=1)
    resumed, _ = _train(tmp_path, "second", callback, resume=str(tmp_path / "second" / "checkpoint-5"), save_steps=5)
    assert callback.folds == 6
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters(), strict=True))


class Unfreeze(transformers.TrainerCallback):
    """Freezes the classifier for the first epoch, then trains it."""

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        model.classifier.requires_grad_(state.epoch >= 1)


def test_a_layer_unfrozen_mid_training_starts_its_own_average(tmp_path):
    callback = RBWACallback(start_epoch=0)
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=0.0,
        weight_decay=0.0, save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True, seed=0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    transformers.Trainer(model=model, args=args, train_dataset=Pairs(), optimizers=(sgd, None),
                         callbacks=[Unfreeze(), callback]).train()
    assert callback.folds == 9
    assert callback.counts["classifier.weight"] == 6 and callback.counts["bert.pooler.dense.weight"] == 9
    for name, p in model.named_parameters():  # every fold wrote its average back
        assert torch.equal(callback.averages[name], p), name


def test_under_ddp_every_process_holds_the_same_weights_after_every_fold(callback_under_ddp):
    """2 processes on CPU (gloo): 32 examples, batch 4 a process, 4 steps an epoch, 3 epochs, averaging from 1."""
    rank0, rank1 = callback_under_ddp("hf")
    assert rank0["folds"] == rank1["folds"] == 8 and len(rank0["digests"]) == 12
    assert rank0["digests"] == rank1["digests"] and len(set(rank0["digests"])) == 12
    # defect 4: the DDP-wrapped model (names module.*) is unwrapped for the state dict and the swap
    for rank in (rank0, rank1):
        assert rank["wrapped"] == "DistributedDataParallel"
        assert rank["state of the wrapped model is the average"] and rank["the average differs from the live weights"]
        assert rank["swapped into the wrapped model"]


def test_a_rebuild_from_the_saved_arguments_keeps_the_users_object_and_every_setting(tmp_path):
    """Defect 5: with restore_callback_states_from_checkpoint=True the Trainer rebuilt the callback from its saved
    arguments and replaced the user's object, which then showed 0 folds (and average_dtype was lost)."""
    straight, _ = _train(tmp_path, "straight", RBWACallback(start_epoch=1, average_dtype=torch.float64))
    _train(tmp_path, "resumed", RBWACallback(start_epoch=1, average_dtype=torch.float64), save_steps=5)
    callback = RBWACallback(start_epoch=1, average_dtype=torch.float64)
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "resumed"), num_train_epochs=3, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=0.0,
        weight_decay=0.0, save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
        restore_callback_states_from_checkpoint=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(), callbacks=[callback],
                                   optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))
    trainer.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-5"))
    assert [c for c in trainer.callback_handler.callbacks if isinstance(c, RBWACallback)] == [callback]
    assert callback.folds == 6 and callback.average_dtype == torch.float64
    assert all(a.dtype == torch.float64 for a in callback.averages.values())
    for a, b in zip(straight.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    state = callback.averaged_state_dict(model)
    assert all(torch.equal(state[name], p) for name, p in model.named_parameters())  # rbwa: written back


def test_fsdp1_and_deepspeed_are_refused_in_one_line_and_fsdp2_is_not(tmp_path):
    def begin(**kwargs):
        args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], num_train_epochs=3,
                                              **kwargs)
        state = transformers.TrainerState(max_steps=9)
        RBWACallback().on_train_begin(args, state, transformers.TrainerControl())

    begin(fsdp=True, fsdp_config={"version": 2})  # folds the shards (tests/test_sharded.py)
    with pytest.raises(ValueError, match="does not run under the Trainer's FSDP1; wrap the optimizer .* or train "
                                         "with FSDP2"):
        begin(fsdp=True, fsdp_config={"version": 1})
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args.deepspeed = "ds_config.json"  # set after construction: a real one needs the deepspeed package
    with pytest.raises(ValueError, match="does not run under the Trainer's DeepSpeed"):
        RBWACallback().on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl())


def test_snapshots_every_n_steps_land_in_output_dir_and_merge_reads_them(tmp_path):
    """9 optimizer steps (3 epochs of 3): snapshots at 3, 6, 9 in output_dir/snapshots, the last the final weights."""
    from rbwa.checkpoints import snapshots
    from rbwa.checkpoints.merge import merge
    from rbwa.hf import SnapshotCallback

    model, _ = _train(tmp_path, "run", SnapshotCallback(every_n_steps=3))
    folder = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["00000003.pt", "00000006.pt", "00000009.pt"]
    last = snapshots.state_dict(torch.load(folder / "00000009.pt", weights_only=True))
    assert set(last) == set(model.state_dict())
    assert all(torch.equal(last[name], p) for name, p in model.state_dict().items())
    merge([folder], tmp_path / "swa.pt", swa_from=6)
    middle = snapshots.state_dict(torch.load(folder / "00000006.pt", weights_only=True))
    merged = torch.load(tmp_path / "swa.pt", weights_only=True)
    name = "classifier.weight"
    assert torch.allclose(merged[name], ((middle[name].double() + last[name].double()) / 2).float())


def test_a_side_average_leaves_training_alone_equals_the_wrapper_and_is_evaluated_by_hand(tmp_path):
    """write_back=None: the Trainer's weights are plain SGD's, the callback's EMA is the wrapper's side average on the
    same batches, `callback.averaged(model)` swaps it in for an evaluation, and its state dict loads into a fresh
    model."""
    callback = RBWACallback(start_epoch=1, average="ema", beta=0.5, write_back=None)
    model, _ = _train(tmp_path, "side", callback)
    plain, _ = _train(tmp_path, "plain")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters(), strict=True))
    model_w, opt_w = _train(tmp_path, "wrapper", wrap=dict(average="ema", beta=0.5, write_back=None))
    names = [name for name, p in model_w.named_parameters() if p.requires_grad]
    for name, average in zip(names, opt_w.averages, strict=True):
        assert torch.allclose(callback.averages[name], average, atol=1e-6), name
    live = [p.detach().clone() for p in model.parameters()]
    with callback.averaged(model):
        assert torch.equal(dict(model.named_parameters())["classifier.weight"], callback.averages["classifier.weight"])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))
    fresh = _model()
    fresh.load_state_dict(callback.averaged_state_dict(model))
    assert torch.equal(fresh.classifier.weight, callback.averages["classifier.weight"])


def test_two_callbacks_keep_their_own_state_files_and_resume_each(tmp_path):
    """Review: an EMA and an SWA callback in one Trainer both wrote checkpoint-N/rbwa_callback.pt; the first was lost
    and the resume refused. Each now has its own file (named by its settings) and resumes as if uninterrupted."""
    def pair():
        return [RBWACallback.ema(beta=0.8, start_epoch=1), RBWACallback.swa(3, start_epoch=1)]

    straight, resumed = pair(), pair()
    for name, callbacks, kw in (("straight", straight, {}), ("resumed", pair(), {"save_steps": 5}),
                                ("resumed", resumed, {"save_steps": 5,
                                                      "resume": str(tmp_path / "resumed" / "checkpoint-5")})):
        model = _model()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / name), num_train_epochs=3, per_device_train_batch_size=4,
            gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=0.0,
            weight_decay=0.0, save_strategy="steps", save_steps=kw.get("save_steps", 100), logging_strategy="no",
            report_to=[], use_cpu=True, seed=0, data_seed=0)
        transformers.Trainer(model=model, args=args, train_dataset=Pairs(), callbacks=callbacks,
                             optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None)
                             ).train(resume_from_checkpoint=kw.get("resume"))
    files = sorted(p.name for p in (tmp_path / "resumed" / "checkpoint-5").glob("rbwa_callback*"))
    assert files == sorted(c.state_file for c in resumed) and len(set(files)) == 2
    for a, b in zip(straight, resumed, strict=True):
        assert a.folds == b.folds > 0
        assert all(torch.equal(a.averages[n], b.averages[n]) for n in a.averages)


def test_a_state_saved_by_rbwa_0_3_resumes(tmp_path):
    """Review: 0.3's state file (rbwa_callback.pt, settings without the ones added since) was refused."""
    straight, _ = _train(tmp_path, "straight", RBWACallback(start_epoch=1))
    _train(tmp_path, "old", RBWACallback(start_epoch=1), save_steps=5)
    checkpoint = tmp_path / "old" / "checkpoint-5"
    new = checkpoint / RBWACallback(start_epoch=1).state_file
    state = torch.load(new, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "more_settings"}, checkpoint / "rbwa_callback.pt")
    new.unlink()
    callback = RBWACallback(start_epoch=1)
    resumed, _ = _train(tmp_path, "old", callback, resume=str(checkpoint), save_steps=5)
    assert callback.folds == 6 and all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_a_callback_given_to_a_second_run_starts_its_own_averages(tmp_path):
    """Review: a callback reused for a run from step 0 (hyperparameter search, model_init) kept the first run's
    averages and changed the second run's trajectory."""
    callback = RBWACallback(start_epoch=1)
    first, _ = _train(tmp_path, "first", callback)
    assert callback.folds == 6
    second, _ = _train(tmp_path, "second", callback)
    assert callback.folds == 6 and all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def test_a_rebuild_pairs_callbacks_given_in_another_order_by_their_settings(tmp_path):
    """Review: with restore_callback_states_from_checkpoint=True, an EMA and an SWA saved in that order and given
    back as [swa, ema] were refused ("different settings"): the Trainer pairs them with the saved arguments in
    order; the rebuild now hands back the user's callback whose settings those are."""
    def run(name, callbacks, save_steps=100, resume=None):
        model = _model()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / name), num_train_epochs=3, per_device_train_batch_size=4,
            gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=0.0,
            weight_decay=0.0, save_strategy="steps", save_steps=save_steps, logging_strategy="no", report_to=[],
            use_cpu=True, seed=0, data_seed=0, restore_callback_states_from_checkpoint=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(), callbacks=callbacks,
                                       optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = [RBWACallback.ema(beta=0.8, start_epoch=1), RBWACallback.swa(3, start_epoch=1)]
    run("straight", straight)
    run("resumed", [RBWACallback.ema(beta=0.8, start_epoch=1), RBWACallback.swa(3, start_epoch=1)], save_steps=5)
    swa, ema = RBWACallback.swa(3, start_epoch=1), RBWACallback.ema(beta=0.8, start_epoch=1)
    trainer = run("resumed", [swa, ema], save_steps=5, resume=str(tmp_path / "resumed" / "checkpoint-5"))
    assert {id(c) for c in trainer.callback_handler.callbacks if isinstance(c, RBWACallback)} == {id(swa), id(ema)}
    for mine, want in ((ema, straight[0]), (swa, straight[1])):
        assert mine.folds == want.folds > 0 and all(torch.equal(mine.averages[n], a) for n, a in want.averages.items())
