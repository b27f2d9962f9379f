"""Image-folder datasets (``PATH/{train,test}/<class>/*.png|jpg|jpeg``), decoded once and cached."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rbwa.data.dataset import Split
from rbwa.errors import UserError
from rbwa.io import atomic_torch_save, atomic_write_json

EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1


def list_split(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (file, label) pairs of one split."""
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist; an image folder needs {root}/train/<class>/ and .../test/<class>/")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{folder} has no class folders; put images in {folder}/<class>/")
    files = []
    for label, name in enumerate(classes):
        images = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in EXTENSIONS)
        if not images:
            raise UserError(f"class folder {folder / name} has no .png/.jpg/.jpeg images; remove it or add images")
        files += [(f, label) for f in images]
    return classes, files


def fingerprint(files: list[tuple[Path, int]], image_size: int | None) -> str:
    """A key for the cache: every file's path, size and modification time, and the requested size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={image_size}".encode())
    for path, label in files:
        st = path.stat()
        digest.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def content_digest(root: Path, files: list[tuple[Path, int]]) -> str:
    """SHA-256 of every file's place in the tree (split/class/name) and bytes: the same for any copy of the data."""
    digest = hashlib.sha256(b"rbwa image folder v1\n")
    for path, _ in files:
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def folder_identity(root: Path, cache_dir: Path) -> str:
    """What an image folder *is*, independent of where it lies: its name, split sizes and content digest.

    Reading every file takes a few seconds for CIFAR-10, so the digest is cached, keyed by the files'
    paths, sizes and modification times.
    """
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    train = list_split(root, "train")[1]
    test = list_split(root, "test")[1]
    cache = cache_dir / "folders" / f"{root.name}-{fingerprint(train + test, None)}.id.json"
    try:
        digest = json.loads(cache.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        digest = content_digest(root, train + test)
        with contextlib.suppress(OSError):  # an unwritable cache costs seconds, not correctness
            atomic_write_json(cache, {"sha256": digest})
    return f"folder:{root.name} ({len(train)} train + {len(test)} test images, sha256 {digest[:16]})"


def decode(path: Path, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot decode image {path} ({e}); delete or replace the file") from e


def decode_split(files: list[tuple[Path, int]], classes: list[str], image_size: int | None) -> Split:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(lambda item: decode(item[0], image_size), files))
    shape = arrays[0].shape
    for (path, _), arr in zip(files, arrays, strict=True):
        if arr.shape != shape:
            raise UserError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} but {files[0][0]} is {shape[1]}x{shape[0]}; "
                "pass --image-size to resize every image"
            )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.tensor([label for _, label in files], dtype=torch.int64), classes)


def load_folder(root: Path, cache_dir: Path, image_size: int | None = None) -> tuple[Split, Split]:
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    train_classes, train_files = list_split(root, "train")
    test_classes, test_files = list_split(root, "test")
    if train_classes != test_classes:
        only = sorted(set(train_classes) ^ set(test_classes))
        raise UserError(f"{root}: train and test have different class folders ({', '.join(only)}); make them match")
    key = fingerprint(train_files + test_files, image_size)
    cache = cache_dir / "folders" / f"{root.name}-{key}.pt"
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            return (Split(blob["train_images"], blob["train_labels"], blob["classes"]),
                    Split(blob["test_images"], blob["test_labels"], blob["classes"]))
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    train = decode_split(train_files, train_classes, image_size)
    test = decode_split(test_files, test_classes, image_size)
    if train.images.shape[2:] != test.images.shape[2:]:
        raise UserError(f"{root}: train and test images differ in size; pass --image-size to resize every image")
    blob = {"train_images": train.images, "train_labels": train.labels, "test_images": test.images,
            "test_labels": test.labels, "classes": train_classes}
    with contextlib.suppress(OSError):  # an unwritable cache costs speed, not correctness
        atomic_torch_save(blob, cache)
    return train, test
