"""`rbwa demo`: sgd, rbwa, its exact twin, rbwa-e and swa on the digits that ship with scikit-learn, offline.

The numbers repeat exactly from run to run on one machine (same seed, same CPU kind and thread count);
another CPU or thread count rounds differently, which training amplifies into a different image or two.
"""

from __future__ import annotations

from pathlib import Path

from rbwa.analysis.plots import plot_curves
from rbwa.io import read_jsonl
from rbwa.training.config import make_config
from rbwa.training.loop import train
from rbwa.training.rundir import METRICS

# label -> (run directory, overrides); SGD on the harmonic schedule is RBWA's exact twin: a dotted line over it
RUNS = {"sgd": ("sgd", {"method": "sgd"}), "rbwa": ("rbwa", {"method": "rbwa"}),
        "sgd (harmonic LR, = rbwa)": ("sgd-harmonic", {"method": "sgd", "lr_schedule": "harmonic"}),
        "rbwa-e": ("rbwa-e", {"method": "rbwa-e"}), "swa": ("swa", {"method": "swa"})}
# A small ResNet-18 (width 1/8) for 15 epochs, averaging from epoch 5: about 2 minutes on 2 CPU cores.
DEMO = {"dataset": "digits", "model": "resnet18", "width": 0.125, "epochs": 15, "start_epoch": 5,
        "batch_size": 64}


def demo(out: str | Path = "rbwa-demo", epochs: int | None = None, seed: int = 0) -> str:
    out = Path(out)
    settings = dict(DEMO, seed=seed)
    if epochs is not None:
        settings.update(epochs=epochs, start_epoch=min(DEMO["start_epoch"], max(0, epochs - 1)))
    configs = {label: make_config(**settings, **o, out=str(out / d)) for label, (d, o) in RUNS.items()}
    summaries = {}
    for label, cfg in configs.items():
        print(f"training {label} ...", flush=True)
        summaries[label] = train(cfg, resume=True, progress=False, log=lambda line: None)
    rows = ["| method | final test acc (%) | best test acc (%) | final train loss |", "|---|---|---|---|"]
    for method, s in summaries.items():
        rows.append(f"| {method} | {s['final_test_acc']:.2f} | {s['best_test_acc']:.2f} | "
                    f"{s['final_train_loss']:.4f} |")
    table = "\n".join(rows)
    curves = {label: [read_jsonl(Path(cfg.out) / METRICS)] for label, cfg in configs.items()}
    png = plot_curves(curves, out / "demo.png", f"rbwa demo: ResNet-18 (width 1/8) on digits, seed {seed}",
                      start_epoch=configs["sgd"].start_epoch)
    (out / "demo.md").write_text(table + "\n")
    print(table)
    print(f"curves: {png}")
    return table
