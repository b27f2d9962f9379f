"""Datasets by name: cifar10, cifar100, digits, folder:PATH."""

from __future__ import annotations

import functools
from pathlib import Path

from rbwa.data.dataset import Split, stratified_indices
from rbwa.errors import UserError

DATASETS = ("cifar10", "cifar100", "digits", "folder:PATH", "shakespeare", "text:PATH")


def check_dataset_name(name: str) -> None:
    if name not in ("cifar10", "cifar100", "digits", "shakespeare") and not (
            (name.startswith("folder:") and len(name) > 7) or (name.startswith("text:") and len(name) > 5)):
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def is_text(name: str) -> bool:
    """Whether a dataset is text (for --model gpt) rather than images."""
    return name == "shakespeare" or name.startswith("text:")


def folder_path(name: str) -> Path:
    return Path(name[len("folder:"):]).expanduser()


@functools.lru_cache(maxsize=16)
def dataset_identity(name: str, cache_dir: str) -> str:
    """The dataset as run names and saved configs record it: what it is, never where it lies.

    The official archives and digits are defined by their name (the archives are MD5-checked when
    loaded); an image folder by its name, split sizes and a digest of its content.
    """
    check_dataset_name(name)
    if name.startswith("text:"):
        from rbwa.data.text import text_identity

        return text_identity(Path(name[5:]).expanduser())
    if not name.startswith("folder:"):
        return name
    from rbwa.data.folder import folder_identity

    return folder_identity(folder_path(name), Path(cache_dir))


def load_dataset(name: str, data_dir: Path, cache_dir: Path, image_size: int | None = None,
                 allow_download: bool = True) -> tuple[Split, Split]:
    """The (train, test) splits of image dataset ``name`` (text loads through ``rbwa.data.text``)."""
    check_dataset_name(name)
    if is_text(name):
        raise UserError(f"{name} is text: it trains --model gpt, not an image classifier")
    if name in ("cifar10", "cifar100"):
        from rbwa.data.cifar import load_cifar

        return load_cifar(name, Path(data_dir), allow_download, Path(cache_dir))
    if name == "digits":
        from rbwa.data.digits import load_digits

        return load_digits()
    from rbwa.data.folder import load_folder

    return load_folder(folder_path(name), Path(cache_dir), image_size)


__all__ = ["DATASETS", "Split", "check_dataset_name", "dataset_identity", "is_text", "load_dataset",
           "stratified_indices"]
