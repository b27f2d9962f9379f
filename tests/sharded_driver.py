"""Driven by tests/test_sharded.py under torchrun (gloo, CPU): every member of the averaging family on a model
sharded by FSDP2's fully_shard, against the same training on one process without sharding. The model is rbwa's GPT,
tiny: the root owns parameters (the embeddings and an output layer tied to the token embedding), which FSDP2 leaves
unsharded after a forward, and each block has its own fully_shard."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from rbwa.averaging import RBWA, lookahead, rswa, sema
from rbwa.averaging.dtensor import local
from rbwa.averaging.named import NamedAverages
from rbwa.models.gpt import GPT

STEPS, SAVE_AT, BATCH = 9, 4, 8
MEMBERS = {
    "rbwa": lambda base: RBWA(base, start_step=2),
    "rbwa-e": lambda base: RBWA(base, start_step=2, average="ema"),
    "rswa": lambda base: rswa(base, steps_per_epoch=3),
    "lookahead": lambda base: lookahead(base, k=3, alpha=0.5),
    "sema": lambda base: sema(base, steps_per_epoch=3, beta=0.9, start_step=2),
    "side average": lambda base: RBWA(base, start_step=2, average="ema", write_back=None),
    "lr_scale": lambda base: RBWA(base, start_step=2, implementation="lr_scale"),
}


VOCAB, TOKENS = 6, 4  # every dimension even: each process holds half of every tensor


def make_model() -> torch.nn.Module:
    """rbwa's GPT, tiny: the root owns the token and position embeddings, the final LayerNorm and the tied head."""
    torch.manual_seed(0)
    return GPT(vocab=VOCAB, context=TOKENS, layers=2, heads=2, width=8).double()


def sharded(model: torch.nn.Module) -> torch.nn.Module:
    for block in model.blocks:
        fully_shard(block)
    return fully_shard(model)  # the root owns the embeddings and the tied head


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g),
            torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g))


def loss_of(model, x, y):
    return torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))


def train(model, opt, steps, rank=0, world=1):
    for t in steps:
        x, y = batch(t)
        share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # this process's part of the batch
        opt.zero_grad()
        loss_of(model, x[share], y[share]).backward()
        opt.step()


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def build(member):
    model = sharded(make_model())
    return model, MEMBERS[member](torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3))


def callback_fold_matches_the_wrapper(rank: int, world: int) -> dict:
    """The callbacks' and the trainer's named averages (NamedAverages: the fold and the evaluation swap) on the
    sharded GPT in a plain FSDP2 loop: the averages and the forward with them equal one unsharded RBWA process's."""
    reference = make_model()
    ref_opt = RBWA(torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9), start_step=2, write_back=None)
    train(reference, ref_opt, range(STEPS))
    model = sharded(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    named = NamedAverages("mean", write_back=None)
    for t in range(STEPS):
        x, y = batch(t)
        share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        opt.zero_grad()
        loss_of(model, x[share], y[share]).backward()
        opt.step()
        named.after_step(model, t - 2)  # RBWA's mean, 1/(k+1), from step 2, never written back (a side average)
    averages = named.averages
    names = [name for name, _ in model.named_parameters()]
    probe = batch(99)[0]
    with torch.no_grad():
        model(probe)  # leaves the root unsharded
        with named.swapped(model), ref_opt.averaged(reference):
            forward = (model(probe) - reference(probe)).abs().max().item()
        after = (model(probe) - reference(probe)).abs().max().item()
    return {"average difference": max((full(averages[n]) - a).abs().max().item()
                                      for n, a in zip(names, ref_opt.averages, strict=True)),
            "averages sharded": all(type(a).__name__ == "DTensor" for a in averages.values()),
            "forward with the average": forward, "forward after": after}


def hf_callback_hooks(rank: int, world: int, out: str) -> dict:
    """rbwa.hf.RBWACallback's own hooks on the sharded GPT in a plain FSDP2 loop (Accelerate runs FSDP on GPUs only):
    every recipe, 3 steps an epoch from epoch 1, saved after 4 steps by on_save (the averages gathered whole) and
    resumed by a new callback (cut back into shards), against one unsharded RBWA process on the same batches."""
    import transformers

    from rbwa.hf import RBWACallback

    recipes = {
        "rbwa": (lambda: RBWACallback.rbwa(1), {}),
        "rbwa-e": (lambda: RBWACallback.rbwa_e(1, beta=0.8), {"average": "ema", "beta": 0.8}),
        "lookahead": (lambda: RBWACallback.lookahead(k=2, alpha=0.5, start_epoch=1),
                      {"average": "ema", "beta": 0.5, "every": 2}),
        "switch ema": (lambda: RBWACallback.switch_ema(3, beta=0.8, start_epoch=1),
                       {"average": "ema", "beta": 0.8, "write_back": 3}),
        "ema": (lambda: RBWACallback.ema(beta=0.8, start_epoch=1), {"average": "ema", "beta": 0.8, "write_back": None}),
        "swa": (lambda: RBWACallback.swa(3, start_epoch=1), {"every": 3, "write_back": None}),
    }
    from rbwa.checkpoints import snapshots
    from rbwa.hf import SnapshotCallback

    control, found = transformers.TrainerControl(), {}
    snapshot = SnapshotCallback(every_n_steps=STEPS, dirpath=os.path.join(out, "hf-snapshots"))
    for member, (recipe, settings) in recipes.items():
        resumed_swap = None
        args = transformers.TrainingArguments(output_dir=os.path.join(out, "hf", member), num_train_epochs=3,
                                              use_cpu=True, report_to=[], fsdp=True, fsdp_config={"version": 2})
        reference = make_model()
        ref_opt = RBWA(torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9), start_step=3, **settings)
        train(reference, ref_opt, range(STEPS))
        model = sharded(make_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        callback, state = recipe(), transformers.TrainerState(max_steps=STEPS, is_world_process_zero=rank == 0)
        callback.on_train_begin(args, state, control, model=model)
        for t in range(STEPS):
            if t == SAVE_AT:  # the Trainer's save: the first process's trainer_state.json records the callback's
                # token (the file every process reads on resume), then every process calls on_save
                shared = [{"RBWACallback": callback.state()} if rank == 0 else None]
                if rank == 0:
                    os.makedirs(os.path.join(args.output_dir, f"checkpoint-{t}"))
                dist.broadcast_object_list(shared)
                state.stateful_callbacks = shared[0]
                callback.on_save(args, state, control)
                dist.barrier()
                saved = torch.load(os.path.join(args.output_dir, f"checkpoint-{t}", callback.state_file),
                                   weights_only=True)
                callback = recipe()  # a new process's callback, resuming from that checkpoint
                state = transformers.TrainerState(max_steps=STEPS, global_step=t, is_world_process_zero=rank == 0,
                                                  stateful_callbacks=state.stateful_callbacks)
                callback.on_train_begin(args, state, control, model=model)
                if saved["averages"]:  # defect 6: the whole averages just resumed, swapped in before any fold
                    with torch.no_grad(), callback.averaged(model):
                        resumed_swap = max((full(p) - saved["averages"][n]).abs().max().item()
                                           for n, p in model.named_parameters())
            train(model, opt, [t], rank, world)
            state.global_step = t + 1
            callback.on_step_end(args, state, control, model=model)
            if member == "ema":  # defect 7: the snapshot callback gathers the shards on every process
                snapshot.on_step_end(args, state, control, model=model)
        names = [name for name, _ in model.named_parameters()]
        probe = batch(99)[0]
        with torch.no_grad():
            model(probe)  # leaves the root unsharded
            with callback.averaged(model), ref_opt.averaged(reference):
                forward = (model(probe) - reference(probe)).abs().max().item()
            after = (model(probe) - reference(probe)).abs().max().item()
        found[member] = {
            "saved whole": all(type(a) is torch.Tensor and a.shape == full(dict(model.named_parameters())[n]).shape
                               for n, a in saved["averages"].items()) and len(saved["averages"]) == len(names),
            "averages sharded": all(type(a).__name__ == "DTensor" for a in callback.averages.values()),
            "folds": [callback.folds, ref_opt.folds],
            "param difference": max((full(p) - r).abs().max().item()
                                    for p, r in zip(model.parameters(), reference.parameters())),
            "average difference": max((full(callback.averages[n]) - a).abs().max().item()
                                      for n, a in zip(names, ref_opt.averages, strict=True)),
            "forward with the average": forward, "forward after": after, "swap right after the resume": resumed_swap}
    dist.barrier()
    written = snapshots.state_dict(torch.load(os.path.join(out, "hf-snapshots", f"{STEPS:08d}.pt"), weights_only=True))
    live = {k: full(v) for k, v in model.state_dict().items()}
    found["snapshot"] = {"names": sorted(written) == sorted(live),
                         "difference": max((written[k] - v.to(written[k].dtype)).abs().max().item()
                                           for k, v in live.items())}
    return found


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    found = {}
    for member in MEMBERS:
        reference = make_model()
        ref_opt = MEMBERS[member](torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3))
        train(reference, ref_opt, range(STEPS))
        model, opt = build(member)
        if mode == "straight":
            train(model, opt, range(STEPS), rank, world)
            # the state as torch.distributed.checkpoint saves it, then straight on: another process resumes it
            train_part, _ = build(member)
            part_model, part_opt = train_part, MEMBERS[member](torch.optim.SGD(train_part.parameters(), lr=0.2,
                                                                               momentum=0.9, weight_decay=1e-3))
            train(part_model, part_opt, range(SAVE_AT), rank, world)
            model_sd, optim_sd = get_state_dict(part_model, part_opt)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(out, member))
            whole = {k: full(v) for k, v in model_sd.items()}  # every process gathers; the first one writes
            if rank == 0:
                torch.save(whole, os.path.join(out, f"{member}-whole.pt"))
        else:  # resume: new processes load the checkpoint into a fresh model and optimizer, then go on
            model_sd, optim_sd = get_state_dict(model, opt)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=os.path.join(out, member))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            assert opt.steps == SAVE_AT, (member, opt.steps)
            train(model, opt, range(SAVE_AT, STEPS), rank, world)
        params = list(model.parameters())
        averages = opt.averages or []
        before = [full(p).clone() for p in params]
        probe = batch(99)[0]
        with torch.no_grad():
            model(probe)  # FSDP2 leaves the root (embedding, tied head) unsharded after this forward
            with opt.averaged(model), ref_opt.averaged(reference):  # each process swaps its own shards
                swapped = max([(full(p) - r).abs().max().item()
                               for p, r in zip(params, ref_opt.averages or reference.parameters())] or [0.0])
                forward_avg = (model(probe) - reference(probe)).abs().max().item()  # the average's own forward
                inside = model.state_dict()  # a checkpoint written in the block stores the live weights
                saved_live = max((full(inside[k]) - b).abs().max().item()
                                 for k, b in (("tokens.weight", before[0]), ("head.weight", before[0])))
            forward_live = (model(probe) - reference(probe)).abs().max().item()  # the live weights are back
        restored = all(torch.equal(full(p), b) for p, b in zip(params, before))
        found[member] = {
            "params sharded": all(type(p).__name__ == "DTensor" for p in params),
            "averages sharded": all(type(a).__name__ == "DTensor" for a in averages),
            "param difference": max((full(p) - r).abs().max().item() for p, r in zip(params, reference.parameters())),
            "average difference": max([(full(a) - r).abs().max().item()
                                       for a, r in zip(averages, ref_opt.averages or [])] or [0.0]),
            "average bytes here": sum(a.numel() * a.element_size() for a in local(averages)),
            "average bytes unsharded": sum(a.numel() * a.element_size() for a in ref_opt.averages or []),
            "steps": opt.steps, "folds": opt.folds, "swapped difference": swapped, "restored": restored,
            "forward with the average": forward_avg, "forward after": forward_live, "saved inside": saved_live,
        }
    if mode == "straight":
        found["callback fold"] = callback_fold_matches_the_wrapper(rank, world)
        found["hf callback"] = hf_callback_hooks(rank, world, out)
    with open(os.path.join(out, f"{mode}-rank{rank}.json"), "w") as f:
        json.dump(found, f)
    dist.destroy_process_group()
    os._exit(0)  # gloo's threads can race the interpreter's teardown (see rbwa.training.distributed.end_distributed)


if __name__ == "__main__":
    main()
