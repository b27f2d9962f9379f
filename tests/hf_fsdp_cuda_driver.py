"""Driven by tests/test_cuda.py under torchrun on CUDA GPUs (Accelerate runs FSDP on GPUs only): the Hugging Face
Trainer with Accelerate's FSDP2 and rbwa.hf.RBWACallback's EMA side average, trained straight for 3 epochs, and
trained for 2 then resumed from its checkpoint to 3. The first process writes what it found."""

import json
import os
import sys

import torch
import transformers

from rbwa.hf import RBWACallback


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids, self.labels = torch.randint(0, 40, (n, 6), generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def run(out: str, epochs: int, resume: bool = False) -> tuple[torch.nn.Module, RBWACallback]:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=4, learning_rate=0.05,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, save_strategy="epoch", logging_strategy="no",
        report_to=[], seed=0, data_seed=0, fsdp="full_shard",
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]})
    callback = RBWACallback.ema(beta=0.5, start_epoch=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(), callbacks=[callback],
                                   optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))
    trainer.train(resume_from_checkpoint=resume or None)
    torch.distributed.barrier()  # the first process has written the last checkpoint before another run looks for it
    return trainer.model, callback


def main() -> None:
    out = sys.argv[1]
    model, straight = run(os.path.join(out, "straight"), 3)
    run(os.path.join(out, "resumed"), 2)
    resumed_model, resumed = run(os.path.join(out, "resumed"), 3, resume=True)
    full = {n: a.full_tensor() if hasattr(a, "full_tensor") else a for n, a in straight.averages.items()}
    again = {n: a.full_tensor() if hasattr(a, "full_tensor") else a for n, a in resumed.averages.items()}
    steps = straight.steps_per_epoch
    saved = torch.load(os.path.join(out, "resumed", f"checkpoint-{2 * steps}", resumed.state_file), weights_only=True)
    found = {"sharded": all(type(a).__name__ == "DTensor" for a in straight.averages.values()),
             "folds": [straight.folds, resumed.folds],
             "saved whole": all(type(a) is torch.Tensor and a.shape == full[n].shape
                                for n, a in saved["averages"].items()),
             "resumed difference": max((full[n].float() - again[n].float()).abs().max().item() for n in full)}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out, "found.json"), "w") as f:
            json.dump(found, f)


if __name__ == "__main__":
    main()
