"""The package's layout (README's Layout): what `import rbwa` loads, and that every import between its parts points
down the floors, never up."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rbwa"
# each part of the package and its floor: a module may import its own part and the parts on lower floors only
FLOORS = {"rbwa.errors": 0, "rbwa.io": 0,
          "rbwa.averaging": 1,
          "rbwa": 2, "rbwa.data": 2, "rbwa.models": 2, "rbwa.checkpoints": 2,  # rbwa: the public face (__init__)
          "rbwa.training": 3, "rbwa.hf": 3, "rbwa.lightning": 3, "rbwa.merge": 3,  # merge: 0.3's alias
          "rbwa.experiments": 4,
          "rbwa.analysis": 5,
          "rbwa.demo": 6,
          "rbwa.cli": 7,
          "rbwa.__main__": 8}


def part(module: str) -> str:
    """The part a module belongs to: the longest name in FLOORS it is, or lies in."""
    return max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)


def imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of rbwa by rbwa, at the top or inside a function."""
    found = []
    for path in SRC.rglob("*.py"):
        name = ".".join(("rbwa", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rbwa":
                found.append((name, node.module))
            elif isinstance(node, ast.Import):
                found += [(name, a.name) for a in node.names if a.name.split(".")[0] == "rbwa"]
    return found


def test_every_import_between_the_parts_points_down_the_floors():
    up = sorted({(part(a), part(b)) for a, b in imports() if part(a) != part(b) and FLOORS[part(a)] <= FLOORS[part(b)]})
    assert not up, up


def test_every_module_lies_in_a_part():
    modules = {".".join(("rbwa", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
               for p in SRC.rglob("*.py")}
    assert all(part(m) for m in modules)
    assert len(list(SRC.glob("*.py"))) <= 10  # the rest lives in the parts' folders


def test_import_rbwa_loads_no_trainer_cli_sweep_or_analysis_module():
    code = "import sys; from rbwa import RBWA; print(' '.join(m for m in sys.modules if m.startswith('rbwa')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "rbwa.averaging.optim" in loaded
    heavy = ("rbwa.training", "rbwa.cli", "rbwa.demo", "rbwa.experiments", "rbwa.analysis")
    assert not [m for m in loaded if part(m) in heavy], loaded
