import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    opt = scope["opt"]
    assert (opt.steps, opt.folds) == (300, 200) and (tmp_path / "opt.pt").exists()


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in README.read_text() and 'pip install -e ".[test]"' in ci
    assert "ruff check && pytest" in README.read_text() and ci.rstrip().endswith("ruff check && pytest")
