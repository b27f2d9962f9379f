"""Driven by tests/test_hf.py and tests/test_lightning.py under torchrun (2 processes, gloo, CPU): a framework's
DDP training with RBWACallback; every process records a digest of its weights after every optimizer step."""

import hashlib
import json
import os
import sys

import torch


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def hf(out: str) -> None:
    import transformers

    from rbwa.hf import RBWACallback

    class Record(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(digest(model))

    seen: list[str] = []
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 40, (32, 6), generator=g), torch.randint(0, 2, (32,), generator=g)
    data = [{"input_ids": ids[i], "labels": labels[i]} for i in range(32)]
    args = transformers.TrainingArguments(output_dir=os.path.join(out, "hf"), num_train_epochs=3,
                                          per_device_train_batch_size=4, learning_rate=0.05, save_strategy="no",
                                          logging_strategy="no", report_to=[], use_cpu=True, ddp_backend="gloo",
                                          seed=0, data_seed=0)
    callback = RBWACallback(start_epoch=1)
    side = RBWACallback.ema(beta=0.5, start_epoch=1)  # never written back: training is the same
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, side, Record()])
    trainer.train()
    wrapped = trainer.model_wrapped  # DDP: its parameters are named module.*
    state = side.averaged_state_dict(wrapped)
    with side.averaged(wrapped):
        swapped = all(torch.equal(p, side.averages[n]) for n, p in model.named_parameters() if n in side.averages)
    finish(out, seen, callback.folds, {
        "wrapped": type(wrapped).__name__,
        "state of the wrapped model is the average": all(torch.equal(state[n], a) for n, a in side.averages.items()),
        "the average differs from the live weights": any(not torch.equal(a, dict(model.named_parameters())[n])
                                                         for n, a in side.averages.items()),
        "swapped into the wrapped model": swapped})


def lightning(out: str) -> None:
    import lightning.pytorch as pl

    from rbwa.lightning import RBWACallback

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(digest(module))

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, 6, generator=g)
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)

    seen: list[str] = []
    callback = RBWACallback(start_epoch=1)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=out, callbacks=[callback, Record()])
    trainer.fit(Tiny())
    finish(out, seen, callback.folds)


def finish(out: str, seen: list[str], folds: int, extra: dict | None = None) -> None:
    rank = os.environ["RANK"]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"digests": seen, "folds": folds, **(extra or {})}, f)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)  # gloo's threads can race the interpreter's teardown (see rbwa.training.distributed.end_distributed)


if __name__ == "__main__":
    {"hf": hf, "lightning": lightning}[sys.argv[1]](sys.argv[2])
