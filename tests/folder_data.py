"""A tiny image folder (``PATH/{train,test}/<class>/*.png``) for the tests of several parts (data, posthoc,
migrate); tests/ is on the path of every test module (its conftest.py puts it there)."""

from pathlib import Path

from PIL import Image


def make_folder(root: Path, classes=("a", "b"), per_class=3, size=8, ext=".png") -> Path:
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                value = 40 * c + i
                Image.new("RGB", (size, size), (value, value + 1, value + 2)).save(root / split / name / f"{i}{ext}")
    return root
