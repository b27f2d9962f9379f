"""Driven by tests/test_lightning.py: RBWACallback under Lightning's FSDP2 strategy (ModelParallelStrategy, 2 gloo
processes on the CPU, each block and the root of rbwa's GPT sharded by fully_shard in configure_model) against the
RBWA wrapper in configure_optimizers under the same strategy on the same batches. Rank 0 writes what it found."""

import json
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

from rbwa import RBWA
from rbwa.checkpoints import snapshots
from rbwa.lightning import RBWACallback, SnapshotCallback
from rbwa.models.gpt import GPT

STEPS_PER_EPOCH, START_EPOCH = 4, 1


class LM(pl.LightningModule):
    def __init__(self, wrapped: dict | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gpt = GPT(vocab=6, context=4, layers=2, heads=2, width=8).double()
        self.wrapped = wrapped

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for block in self.gpt.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.gpt, mesh=mesh)  # the root owns the embeddings and the tied head

    def training_step(self, batch, _):
        (x,) = batch
        return torch.nn.functional.cross_entropy(self.gpt(x[:, :-1]).reshape(-1, 6), x[:, 1:].reshape(-1))

    def configure_optimizers(self):
        sgd = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return sgd if self.wrapped is None else RBWA(sgd, start_step=START_EPOCH * STEPS_PER_EPOCH, **self.wrapped)


def fit(model: LM, callbacks: list, root: str, epochs: int = 3, save: bool = False,
        resume: str | None = None) -> pl.Trainer:
    data = torch.utils.data.TensorDataset(torch.randint(0, 6, (32, 5), generator=torch.Generator().manual_seed(0)))
    if save:  # Lightning's distributed checkpoint (a folder of shards), the last one kept
        callbacks = [*callbacks, pl.callbacks.ModelCheckpoint(dirpath=f"{root}/ckpt", save_last=True)]
    trainer = pl.Trainer(accelerator="cpu", devices=2, max_epochs=epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=save, default_root_dir=root,
                         strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                                        process_group_backend="gloo"), callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=resume)
    return trainer


def difference(a: dict, b: dict) -> float:
    return max((a[n].full_tensor() - b[n].full_tensor()).abs().max().item() for n in a)


def main() -> None:
    out = sys.argv[1]
    found = {}
    for name, settings in (("rbwa", {}), ("side ema", {"average": "ema", "beta": 0.5, "write_back": None})):
        callback = RBWACallback(start_epoch=START_EPOCH, **settings)
        with_callback = LM()
        snapshot = SnapshotCallback(f"{out}/snapshots-{name}", every_n_steps=STEPS_PER_EPOCH)
        trainer = fit(with_callback, [callback, snapshot], out)
        final = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in with_callback.state_dict().items()}
        trainer.strategy.barrier()
        written = snapshots.state_dict(torch.load(f"{out}/snapshots-{name}/{3 * STEPS_PER_EPOCH:08d}.pt",
                                                  weights_only=True))
        with_wrapper = LM(settings)
        fit(with_wrapper, [], out)
        wrapper_opt = with_wrapper.trainer.optimizers[0] if with_wrapper._trainer else None
        live = max((a.full_tensor() - b.full_tensor()).abs().max().item()
                   for a, b in zip(with_callback.parameters(), with_wrapper.parameters(), strict=True))
        averages = wrapper_opt.averages if wrapper_opt is not None else None
        names = [n for n, _ in with_callback.named_parameters()]
        average = max((callback.averages[n].full_tensor() - a.full_tensor()).abs().max().item()
                      for n, a in zip(names, averages or [], strict=True)) if averages else None
        found[name] = {"live difference": live, "average difference": average, "folds": callback.folds,
                       "averages sharded": all(type(a).__name__ == "DTensor" for a in callback.averages.values()),
                       "steps": trainer.global_step, "snapshot names": sorted(written) == sorted(final),
                       "snapshot difference": max((written[k] - v.to(written[k].dtype)).abs().max().item()
                                                  for k, v in final.items())}
    # saved after 2 epochs, resumed to 3 in new Trainers: the side EMA ends where the uninterrupted run's does
    settings = {"start_epoch": START_EPOCH, "average": "ema", "beta": 0.5, "write_back": None}
    straight_callback, resumed_callback = RBWACallback(**settings), RBWACallback(**settings)
    straight, resumed = LM(), LM()
    fit(straight, [straight_callback], out)
    fit(LM(), [RBWACallback(**settings)], out, epochs=2, save=True)
    trainer = fit(resumed, [resumed_callback], out, resume=f"{out}/ckpt/last.ckpt")
    found["resumed"] = {"live difference": difference(dict(straight.named_parameters()),
                                                      dict(resumed.named_parameters())),
                        "average difference": difference(straight_callback.averages, resumed_callback.averages),
                        "folds": resumed_callback.folds}
    if trainer.global_rank == 0:
        with open(f"{out}/found.json", "w") as f:
            json.dump(found, f)


if __name__ == "__main__":
    main()
