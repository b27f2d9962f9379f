"""The official CIFAR-10/100 "python version" archives: find, download with a progress bar, verify, parse."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from rbwa.data.dataset import Split
from rbwa.errors import UserError

ARCHIVES = {
    "cifar10": {
        "file": "cifar-10-python.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
        "test": ["cifar-10-batches-py/test_batch"],
        "meta": "cifar-10-batches-py/batches.meta",
        "labels": b"labels",
        "names": b"label_names",
    },
    "cifar100": {
        "file": "cifar-100-python.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["cifar-100-python/train"],
        "test": ["cifar-100-python/test"],
        "meta": "cifar-100-python/meta",
        "labels": b"fine_labels",
        "names": b"fine_label_names",
    },
}


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` atomically, with a tqdm progress bar."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp, dest)


def archive_path(name: str, data_dir: Path, allow_download: bool = True) -> Path:
    """The verified archive for ``name`` in ``data_dir``, downloading it if absent."""
    spec = ARCHIVES[name]
    path = data_dir / spec["file"]
    if not path.exists():
        if not allow_download:
            raise UserError(f"{path} not found; download {spec['url']} and put it there")
        try:
            download(spec["url"], path)
        except OSError as e:
            raise UserError(
                f"cannot download {spec['url']} ({e}); offline, download it elsewhere and put it at {path}"
            ) from e
    if md5(path) != spec["md5"]:
        raise UserError(f"{path} has the wrong MD5 checksum (expected {spec['md5']}); delete it and download it again")
    return path


def _unpickle(tar: tarfile.TarFile, member: str, path: Path) -> dict:
    try:
        f = tar.extractfile(member)
        if f is None:
            raise KeyError(member)
        return pickle.load(f, encoding="bytes")
    except KeyError as e:
        raise UserError(f"{path} has no member {member}: not an official CIFAR archive") from e
    except (pickle.UnpicklingError, EOFError, tarfile.TarError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read {member} ({e}); the archive is damaged, download it again") from e


def parse_archive(name: str, path: Path) -> tuple[Split, Split]:
    """Parse an official-format archive (pickled batches of 3072-byte rows, CHW order) into splits."""
    spec = ARCHIVES[name]
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path} is not a readable .tar.gz ({e}); download it again") from e
    with tar:
        names = [n.decode() for n in _unpickle(tar, spec["meta"], path)[spec["names"]]]
        splits = []
        for part in ("train", "test"):
            batches = [_unpickle(tar, m, path) for m in spec[part]]
            try:
                data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
                labels = np.concatenate([np.asarray(b[spec["labels"]], dtype=np.int64) for b in batches])
                images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
            except (KeyError, ValueError) as e:
                raise UserError(f"{path}: malformed {part} batches ({e}); download the archive again") from e
            splits.append(Split(images, torch.from_numpy(labels), names))
    return splits[0], splits[1]


def load_cifar(name: str, data_dir: Path, allow_download: bool = True) -> tuple[Split, Split]:
    return parse_archive(name, archive_path(name, data_dir, allow_download))
