import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_stage_on_the_cpu(tmp_path):
    pytest.importorskip("sklearn")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu.py"), str(tmp_path), "--dry-run"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for method in ("sgd", "rbwa"):
        rows = results["throughput (images/s)"][method]
        assert all(isinstance(v, float) and v > 0 for k, v in rows.items() if k != "ratio to eager fp32"), rows
        assert rows["ratio to eager fp32"]["eager fp32"] == 1.0 and len(rows["ratio to eager fp32"]) == 4
    assert set(results["optimizer step"]["seconds per step"]) == {"sgd", "rbwa copy", "rbwa lr_scale"}
    assert results["sharing one device (images/s)"]["4 processes"] > 0
    lm = results["language model (tokens/s, the gpu-lm GPT, AdamW)"]
    assert set(lm) == {f"{m}, weights in {d}" for m in ("sgd", "rbwa") for d in ("float32", "bfloat16")}
    assert all(isinstance(v, float) and v > 0 for v in lm.values()), lm
    run = results["rbwa train, 2 epochs"]
    assert run["exit status"] == 0 and run["summary"]["status"] == "finished" and run["summary"]["epochs"] == 2


def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu.py"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA GPU") and not (tmp_path / "out").exists()


def _paper_gpu(out: Path, *flags: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/paper_gpu.py"), str(out), "--dry-run", "--seeds",
                           "1", *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "paper-gpu.json").read_text())


def test_paper_gpu_dry_run_stops_what_the_time_limit_cuts_off_and_a_rerun_resumes_it(tmp_path):
    """Every stage on the CPU (smoke preset, digits for both figures): the probe, the packed runs, the time limit,
    the report. A run stopped at the limit is never counted; the same command again finishes it."""
    pytest.importorskip("sklearn")
    cut = _paper_gpu(tmp_path, "--budget", "1")  # less than a run takes to import torch
    pack = cut["runs at once"]
    assert pack in (1, 2) and set(cut["probe images/s per run"]) == {"1", "2"}
    assert "finished" not in cut["statuses"].values() and len(cut["statuses"]) == 4  # fig3's and fig5's runs
    assert list(cut["exit status (-9: stopped at the time limit)"].values()) == [-9] * pack  # the first wave
    report = (tmp_path / "report.md").read_text()
    assert "n = " not in report  # nothing counted
    whole = _paper_gpu(tmp_path, "--budget", "300")
    assert set(whole["statuses"].values()) == {"finished"}
    assert "Claim 1" in (tmp_path / "report.md").read_text()


def test_paper_gpu_refuses_to_run_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/paper_gpu.py"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA GPU") and not (tmp_path / "out").exists()


def test_the_language_model_benchmark_prints_its_ratios(tmp_path):
    """Two steps, one round, random tokens (no text in tmp_path): the lines a reader compares, with their ratios."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/lm.py"), "--data-dir", str(tmp_path), "--steps", "2",
                           "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "GPT 4x4x128, context 64, batch 12, 809,856 parameters, 2 steps x 1 rounds" in lines
    ratio = next(line for line in lines if line.startswith("rbwa train_epoch / minimal loop: "))
    assert float(ratio.split(": ")[1]) > 0
