"""`rbwa demo`: sgd, rbwa, rbwa-e and swa on the digits that ship with scikit-learn, offline, in minutes."""

from __future__ import annotations

from pathlib import Path

from rbwa.config import make_config
from rbwa.io import read_jsonl
from rbwa.plots import plot_curves
from rbwa.train import METRICS, train

METHODS = ("sgd", "rbwa", "rbwa-e", "swa")
# A small ResNet-18 (width 1/8) for 15 epochs, averaging from epoch 5: about 2 minutes on 2 CPU cores.
DEMO = {"dataset": "digits", "model": "resnet18", "width": 0.125, "epochs": 15, "start_epoch": 5,
        "batch_size": 64}


def demo(out: str | Path = "rbwa-demo", epochs: int | None = None, seed: int = 0) -> str:
    out = Path(out)
    settings = dict(DEMO, seed=seed)
    if epochs is not None:
        settings.update(epochs=epochs, start_epoch=min(DEMO["start_epoch"], max(0, epochs - 1)))
    configs = {m: make_config(**settings, method=m, out=str(out / m)) for m in METHODS}
    summaries = {}
    for method, cfg in configs.items():
        print(f"training {method} ...", flush=True)
        summaries[method] = train(cfg, resume=True, progress=False, log=lambda line: None)
    rows = ["| method | final test acc (%) | best test acc (%) | final train loss |", "|---|---|---|---|"]
    for method, s in summaries.items():
        rows.append(f"| {method} | {s['final_test_acc']:.2f} | {s['best_test_acc']:.2f} | "
                    f"{s['final_train_loss']:.4f} |")
    table = "\n".join(rows)
    curves = {m: [read_jsonl(out / m / METRICS)] for m in METHODS}
    png = plot_curves(curves, out / "demo.png", f"rbwa demo: ResNet-18 (width 1/8) on digits, seed {seed}",
                      start_epoch=configs["sgd"].start_epoch)
    (out / "demo.md").write_text(table + "\n")
    print(table)
    print(f"curves: {png}")
    return table
