"""`rbwa demo`: sgd, rbwa, its exact twin, rbwa-e and swa on the digits that ship with scikit-learn, offline, and
what they show, measured by loss (every method ends near the same accuracy on digits; the losses tell them apart).

The numbers repeat exactly from run to run on one machine (same seed, same CPU kind and thread count);
another CPU or thread count rounds differently, which training amplifies into a different image or two.
"""

from __future__ import annotations

import math
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
TWIN = "sgd (harmonic LR, = rbwa)"
# A small ResNet-18 (width 1/8) for 15 epochs, averaging from epoch 5: about 2 minutes on 2 CPU cores.
DEMO = {"dataset": "digits", "model": "resnet18", "width": 0.125, "epochs": 15, "start_epoch": 5,
        "batch_size": 64}


def lesson(metrics: dict[str, list[dict]]) -> str:
    """What the runs show, in one sentence, from their per-epoch metrics (label -> metrics.jsonl rows). Pure."""
    end = {label: rows[-1] for label, rows in metrics.items()}
    pairs = [(a[k], b[k]) for a, b in zip(metrics["rbwa"], metrics[TWIN]) for k in ("test_loss", "train_loss")
             if a.get(k) is not None and b.get(k) is not None]
    gap = max((abs(x - y) for x, y in pairs), default=math.nan)
    if len(metrics["rbwa"]) != len(metrics[TWIN]) or math.isnan(gap):
        twin = "losses that cannot be set beside RBWA's (the runs differ in length or a loss is not a number)"
    else:
        twin = "the same losses at every epoch" if gap == 0 else f"losses within {gap:.1g} of RBWA's at every epoch"
    rbwa, sgd = end["rbwa"], end["sgd"]
    stall = ("and that decay stalls it" if rbwa["train_loss"] > sgd["train_loss"] else "and that decay does not "
             "stall it here") + f" (final training loss {rbwa['train_loss']:.4f} against SGD's {sgd['train_loss']:.4f})"
    swa = end["swa"]["test_loss"]
    side = (f"a side average of SGD's own weights (SWA) lowers its test loss from {sgd['test_loss']:.4f} to {swa:.4f} "
            "without touching its training" if swa < sgd["test_loss"] else "a side average of SGD's own weights "
            f"(SWA) does not lower its test loss here ({swa:.4f} against {sgd['test_loss']:.4f})")
    return (f"Lesson: RBWA is SGD on a harmonic learning-rate decay (SGD on that schedule gets {twin}), {stall}; "
            f"{side}. One seed on a small task shows the mechanism, not a verdict: see the reports for that.")


def demo(out: str | Path = "rbwa-demo", epochs: int | None = None, seed: int = 0) -> str:
    out = Path(out)
    settings = dict(DEMO, seed=seed)
    if epochs is not None:
        settings.update(epochs=epochs, start_epoch=min(DEMO["start_epoch"], max(0, epochs - 1)))
    configs = {label: make_config(**settings, **o, out=str(out / d)) for label, (d, o) in RUNS.items()}
    for label, cfg in configs.items():
        print(f"training {label} ...", flush=True)
        train(cfg, resume=True, progress=False, log=lambda line: None)
    metrics = {label: read_jsonl(Path(cfg.out) / METRICS) for label, cfg in configs.items()}
    rows = ["| method | final test loss | final test acc (%) | final train loss |", "|---|---|---|---|"]
    for method, m in metrics.items():
        rows.append(f"| {method} | {m[-1]['test_loss']:.4f} | {m[-1]['test_acc']:.2f} | {m[-1]['train_loss']:.4f} |")
    text = "\n".join(rows) + "\n\n" + lesson(metrics)
    png = plot_curves({label: [m] for label, m in metrics.items()}, out / "demo.png",
                      f"rbwa demo: ResNet-18 (width 1/8) on digits, seed {seed}",
                      start_epoch=configs["sgd"].start_epoch, metric="test_loss",
                      loss_axis=("Test loss", "cross-entropy (log scale)", "log"))
    (out / "demo.md").write_text(text + "\n")
    print(text)
    print(f"curves: {png}")
    return text
