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
    run = results["rbwa train, 2 epochs"]
    assert run["exit status"] == 0 and run["summary"]["status"] == "finished" and run["summary"]["epochs"] == 2


def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu.py"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA GPU") and not (tmp_path / "out").exists()
