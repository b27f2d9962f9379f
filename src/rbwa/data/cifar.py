"""The official CIFAR-10/100 "python version" data: an unpacked folder or the archive; found, downloaded,
verified (once, the verdict cached), parsed.

In ``--data-dir``, the unpacked folder (``cifar-10-batches-py/`` or ``cifar-100-python/``, what the archive
unpacks to, as torchvision's data root holds it) is used when it exists, every file checked against its official
MD5; otherwise the archive, downloaded when absent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch

from rbwa.data.dataset import Split
from rbwa.errors import UserError

_BATCHES_10 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
               "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
               "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb"}
ARCHIVES = {
    "cifar10": {
        "file": "cifar-10-python.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": list(_BATCHES_10),
        "test": ["test_batch"],
        "meta": "batches.meta",
        # every file's official MD5 (the ones torchvision checks)
        "files": {**_BATCHES_10, "test_batch": "40351d587109b95175f43aff81a1287e",
                  "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
        "labels": b"labels",
        "names": b"label_names",
    },
    "cifar100": {
        "file": "cifar-100-python.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "files": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                  "meta": "7973b15100ade9c7d40fb424638fde48"},
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


def verified(path: Path, expected: str, cache_dir: Path | None) -> bool:
    """Whether ``path``'s MD5 is ``expected``; a match is remembered in ``cache_dir`` under the file's path, size
    and modification time, so a file that stays as it is is read once, not on every run of a sweep."""
    st = path.stat()
    key = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, expected])
    mark = None if cache_dir is None else cache_dir / "verified" / hashlib.sha256(key.encode()).hexdigest()[:32]
    if mark is not None and mark.exists():
        return True
    if md5(path) != expected:
        return False
    if mark is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next run a checksum
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(key + "\n")
    return True


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold an flock on ``directory`` itself (no lock file left behind), waiting while another process holds it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def download(url: str, dest: Path, expected_md5: str) -> None:
    """Download ``url`` to ``dest`` through a temporary file of this process's own, with a tqdm progress bar;
    ``dest`` appears only once the bytes have the expected MD5. Raises OSError (network) or UserError (bytes)."""
    from tqdm import tqdm

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected_md5:
            raise UserError(f"the download of {url} has the wrong MD5 checksum (expected {expected_md5}); try again")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def archive_path(name: str, data_dir: Path, allow_download: bool = True, cache_dir: Path | None = None) -> Path:
    """The verified archive for ``name`` in ``data_dir``, downloading it if absent (one process at a time: the
    others wait for it and then use its file)."""
    spec = ARCHIVES[name]
    path = data_dir / spec["file"]
    if not path.exists():
        if not allow_download:
            raise UserError(f"{path} not found; download {spec['url']} and put it there")
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            with _exclusive(data_dir):
                if not path.exists():
                    download(spec["url"], path, spec["md5"])
        except OSError as e:
            raise UserError(f"cannot download {spec['url']} into {data_dir} ({e}); if this machine is offline, "
                            f"download it elsewhere and put it at {path}, or put the unpacked folder "
                            f"{spec['folder']}/ (as torchvision keeps it) in {data_dir}") from e
    if not verified(path, spec["md5"], cache_dir):
        raise UserError(f"{path} has the wrong MD5 checksum (expected {spec['md5']}); delete it and download it again")
    return path


def _unpickle(f: IO[bytes], member: str, where: Path, what: str) -> dict:
    try:
        return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read {member} ({e}); {what} is damaged, download it again") from e


def parse(name: str, read: Callable[[str], dict], where: Path) -> tuple[Split, Split]:
    """The (train, test) splits from the official pickled batches (3072-byte rows, CHW order); ``read(member)``
    unpickles one file of the folder the archive unpacks to."""
    spec = ARCHIVES[name]
    names = [n.decode() for n in read(spec["meta"])[spec["names"]]]
    splits = []
    for part in ("train", "test"):
        batches = [read(m) for m in spec[part]]
        try:
            data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
            labels = np.concatenate([np.asarray(b[spec["labels"]], dtype=np.int64) for b in batches])
            images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        except (KeyError, ValueError) as e:
            raise UserError(f"{where}: malformed {part} batches ({e}); download the data again") from e
        splits.append(Split(images, torch.from_numpy(labels), names))
    return splits[0], splits[1]


def parse_archive(name: str, path: Path) -> tuple[Split, Split]:
    """Parse an official archive."""
    folder = ARCHIVES[name]["folder"]
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path} is not a readable .tar.gz ({e}); download it again") from e

    def read(member: str) -> dict:
        try:
            f = tar.extractfile(f"{folder}/{member}")
        except KeyError:
            f = None
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{path}: cannot read {folder}/{member} ({e}); the archive is damaged, download it "
                            "again") from e
        if f is None:
            raise UserError(f"{path} has no member {folder}/{member}: not an official CIFAR archive")
        return _unpickle(f, f"{folder}/{member}", path, "the archive")

    with tar:
        return parse(name, read, path)


def check_folder(name: str, folder: Path, cache_dir: Path | None) -> None:
    """Refuse an unpacked folder with a missing or damaged file, naming the file and what to do."""
    spec = ARCHIVES[name]
    for member, expected in spec["files"].items():
        path = folder / member
        restore = (f"restore it from the official archive ({spec['url']}, which unpacks to {spec['folder']}/), "
                   f"or remove {folder} to use the archive {spec['file']} instead")
        if not path.is_file():
            raise UserError(f"{path} is missing from the unpacked {name} folder; {restore}")
        if not verified(path, expected, cache_dir):
            raise UserError(f"{path} has the wrong MD5 checksum (expected {expected}): a damaged copy; {restore}")


def parse_folder(name: str, folder: Path) -> tuple[Split, Split]:
    """Parse the unpacked folder of an official archive."""
    def read(member: str) -> dict:
        with open(folder / member, "rb") as f:
            return _unpickle(f, member, folder, "the file")

    return parse(name, read, folder)


def load_cifar(name: str, data_dir: Path, allow_download: bool = True,
               cache_dir: Path | None = None) -> tuple[Split, Split]:
    """The splits from ``data_dir``: its unpacked folder where there is one (verified file by file), else the
    archive (downloaded when absent). ``cache_dir`` remembers what was verified."""
    folder = data_dir / ARCHIVES[name]["folder"]
    if folder.is_dir():
        check_folder(name, folder, cache_dir)
        return parse_folder(name, folder)
    return parse_archive(name, archive_path(name, data_dir, allow_download, cache_dir))
