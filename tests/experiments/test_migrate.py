import json
import re
import shutil
from pathlib import Path

import pytest

from folder_data import make_folder
from rbwa.analysis.report import write_report
from rbwa.cli import main
from rbwa.errors import UserError
from rbwa.experiments.migrate import migrate
from rbwa.experiments.runner import reproduce
from rbwa.training.config import MACHINE_KEYS

MACHINE_PATH = re.compile(r"(^|[\s\"'`(=:])/(work|root|home|tmp|Users|var|mnt)/")


def _sweep(tmp_path: Path) -> tuple[Path, Path, dict]:
    data = make_folder(tmp_path / "data" / "pics", per_class=8, size=32)
    overrides = {"dataset": f"folder:{data}", "train_subset": 16, "test_subset": 16,
                 "cache_dir": str(tmp_path / "cache")}
    out = tmp_path / "sweep"
    reproduce("fig3", preset="smoke", seeds=1, out=out, overrides=overrides)
    return data, out, overrides


def _make_legacy(out: Path, data: Path) -> dict[str, str]:
    """Turn a sweep into what rbwa 0.1 wrote: machine paths in configs and manifest, names hashing the path."""
    spec = json.loads((out / "fig3.json").read_text())
    spec["overrides"]["dataset"] = f"folder:{data}"
    spec["overrides"]["cache_dir"] = str(out.parent / "cache")
    new_names = {}
    for i, entry in enumerate(spec["runs"]):
        run = out / entry["run"]
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(dataset=f"folder:{data}", out=str(out / f"runs/legacy-{i}"), data_dir="/root/.cache/rbwa",
                   cache_dir=str(out.parent / "cache"))
        (run / "config.json").write_text(json.dumps(cfg))
        run.rename(out / "runs" / f"legacy-{i}")
        new_names[f"runs/legacy-{i}"] = entry["run"]
        entry["run"] = f"runs/legacy-{i}"
    (out / "fig3.json").write_text(json.dumps(spec))
    return new_names


def test_migration_restores_todays_names_and_leaves_no_machine_path(tmp_path, capsys):
    pytest.importorskip("PIL")
    data, out, overrides = _sweep(tmp_path)
    today = json.loads((out / "fig3.json").read_text())
    metrics = {e["run"]: (out / e["run"] / "metrics.jsonl").read_bytes() for e in today["runs"]}
    names = _make_legacy(out, data)
    # the new code refuses to resume a legacy run and names the fix
    with pytest.raises(UserError, match="run `rbwa migrate"):
        from rbwa.training.config import make_config
        from rbwa.training.loop import train

        legacy = json.loads((out / "runs/legacy-0/config.json").read_text())
        train(make_config(**{**legacy, "out": str(out / "runs/legacy-0")}), resume=True)
    assert main(["migrate", str(out)]) == 0
    assert "renamed 4 run(s)" in capsys.readouterr().out
    assert json.loads((out / "fig3.json").read_text()) == today  # the manifest rebuilt exactly
    for old, new in names.items():
        assert not (out / old).exists() and (out / new / "metrics.jsonl").read_bytes() == metrics[new]
        cfg = json.loads((out / new / "config.json").read_text())
        assert not set(cfg) & set(MACHINE_KEYS) and cfg["dataset"].startswith("folder:pics (16 train + 16 test")
    # migrating again is a no-op; today's reproduce trains nothing; the report carries no machine path
    assert migrate(out) == []
    reproduce("fig3", preset="smoke", seeds=1, out=out, overrides=overrides)
    assert capsys.readouterr().out.count("finished, skipped") == 4
    write_report(out)
    for f in [*out.glob("*.json"), out / "report.md", out / "results.csv", *out.glob("runs/*/*.json")]:
        assert not MACHINE_PATH.search(f.read_text()), f


def test_a_moved_copy_of_the_data_finds_the_same_runs(tmp_path, capsys):
    data, out, overrides = _sweep(tmp_path)
    moved = shutil.copytree(data, tmp_path / "elsewhere" / "pics")
    capsys.readouterr()
    reproduce("fig3", preset="smoke", seeds=1, out=out, overrides={**overrides, "dataset": f"folder:{moved}"})
    assert capsys.readouterr().out.count("finished, skipped") == 4


def test_migration_refuses_a_run_whose_config_is_not_its_manifests(tmp_path):
    data, out, _ = _sweep(tmp_path)
    _make_legacy(out, data)
    cfg = json.loads((out / "runs/legacy-1/config.json").read_text())
    (out / "runs/legacy-1/config.json").write_text(json.dumps({**cfg, "lr": 0.5}))
    with pytest.raises(UserError, match=r"legacy-1 was run with another config than its manifest says \(lr\)"):
        migrate(out)
    assert (out / "runs/legacy-0").is_dir()  # nothing was renamed


# ---- the committed results --------------------------------------------------------------------------
RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.parametrize("folder", sorted(p.name for p in RESULTS.iterdir() if p.is_dir()))
def test_committed_results_carry_no_machine_path(folder):
    files = [*(RESULTS / folder).glob("*.json"), *(RESULTS / folder).glob("*.md"), *(RESULTS / folder).glob("*.csv"),
             *(RESULTS / folder).glob("runs/*/*.json")]
    assert files
    assert [str(f) for f in files if MACHINE_PATH.search(f.read_text())] == []
