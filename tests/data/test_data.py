import hashlib
import io
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from folder_data import make_folder
from rbwa.data import cifar, dataset_identity, folder, load_dataset, stratified_indices
from rbwa.errors import UserError


# ---- stratified subsets -------------------------------------------------------------------------
def test_stratified_subset_keeps_proportions_and_is_seeded():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_indices(labels, 10, seed=1)
    assert torch.bincount(labels[idx]).tolist() == [6, 3, 1]
    assert len(set(idx.tolist())) == 10
    assert torch.equal(idx, stratified_indices(labels, 10, seed=1))
    assert not torch.equal(idx, stratified_indices(labels, 10, seed=2))


def test_stratified_subset_largest_remainders():
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    assert torch.bincount(labels[stratified_indices(labels, 4, 0)]).tolist() == [2, 1, 1]


@pytest.mark.parametrize(("n", "message"), [(101, "larger than the dataset"), (2, "smaller than the number of")])
def test_stratified_subset_errors(n, message):
    with pytest.raises(UserError, match=message):
        stratified_indices(torch.arange(100) % 3, n, 0)


# ---- official CIFAR archives --------------------------------------------------------------------
def _add(tar: tarfile.TarFile, name: str, obj) -> None:
    data = pickle.dumps(obj)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def official_files(name: str, per_batch: int = 4) -> dict[str, bytes]:
    """The pickled files of the official layout (member -> bytes): ``per_batch`` random images per batch file,
    labels counting 0, 1, 2, ... within a file (fine and coarse differ for cifar100)."""
    spec = cifar.ARCHIVES[name]
    rng = np.random.default_rng(0)
    files = {}
    for member in spec["train"] + spec["test"]:
        labels = [(i + len(files)) % (10 if name == "cifar10" else 100) for i in range(per_batch)]
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), spec["labels"]: labels}
        if name == "cifar100":
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        files[member] = pickle.dumps(batch)
    meta = {spec["names"]: [f"class{i}".encode() for i in range(10 if name == "cifar10" else 100)]}
    if name == "cifar100":
        meta[b"coarse_label_names"] = [f"super{i}".encode() for i in range(20)]
    files[spec["meta"]] = pickle.dumps(meta)
    return files


def build_archive(path: Path, name: str, per_batch: int = 4) -> np.ndarray:
    """An archive in the official layout; returns the first training image (CHW) for checking."""
    files = official_files(name, per_batch)
    with tarfile.open(path, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(f"{cifar.ARCHIVES[name]['folder']}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    first = pickle.loads(files[cifar.ARCHIVES[name]["train"][0]])[b"data"][0]
    return first.reshape(3, 32, 32)


def build_folder(data_dir: Path, name: str, monkeypatch, per_batch: int = 4) -> dict[str, dict]:
    """The unpacked folder in ``data_dir``, with its files' MD5s made the official ones; returns what it holds."""
    folder = data_dir / cifar.ARCHIVES[name]["folder"]
    folder.mkdir(parents=True)
    files = official_files(name, per_batch)
    for member, data in files.items():
        (folder / member).write_bytes(data)
    monkeypatch.setitem(cifar.ARCHIVES[name], "files", {m: hashlib.md5(d).hexdigest() for m, d in files.items()})
    return {m: pickle.loads(d) for m, d in files.items()}


@pytest.mark.parametrize(("name", "n_train", "n_classes"), [("cifar10", 20, 10), ("cifar100", 4, 100)])
def test_official_archive_parser(tmp_path, name, n_train, n_classes):
    path = tmp_path / cifar.ARCHIVES[name]["file"]
    first = build_archive(path, name)
    train, test = cifar.parse_archive(name, path)
    assert train.images.shape == (n_train, 3, 32, 32) and len(test) == 4
    assert torch.equal(train.images[0], torch.from_numpy(first))  # rows are CHW, 1024 bytes a channel
    assert train.labels.tolist()[:4] == [0, 1, 2, 3] and len(train.classes) == n_classes


def test_archive_found_in_data_dir_and_verified(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-python.tar.gz"
    build_archive(path, "cifar10")
    monkeypatch.setitem(cifar.ARCHIVES["cifar10"], "md5", cifar.md5(path))
    train, _ = load_dataset("cifar10", tmp_path, tmp_path)
    assert len(train) == 20


def test_wrong_checksum_is_refused(tmp_path):
    build_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10")
    with pytest.raises(UserError, match="wrong MD5 checksum"):
        load_dataset("cifar10", tmp_path, tmp_path)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps({b"label_names": [b"a"]})[:-5]
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="damaged"):
        cifar.parse_archive("cifar10", path)


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=f"put it at {tmp_path}/cifar-100-python.tar.gz"):
        load_dataset("cifar100", tmp_path, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "n_train", "n_classes"), [("cifar10", 20, 10), ("cifar100", 4, 100)])
def test_the_unpacked_folder_loads_in_the_official_order(tmp_path, monkeypatch, name, n_train, n_classes):
    files = build_folder(tmp_path, name, monkeypatch)
    spec = cifar.ARCHIVES[name]
    train, test = load_dataset(name, tmp_path, tmp_path / "cache")
    rows = np.concatenate([files[m][b"data"] for m in spec["train"]])
    labels = sum((files[m][spec["labels"]] for m in spec["train"]), [])
    assert torch.equal(train.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))  # every image, in file order
    assert train.labels.tolist() == labels and len(train) == n_train  # cifar100: the fine labels, not the coarse
    assert torch.equal(test.images.flatten(1), torch.from_numpy(files[spec["test"][0]][b"data"]))
    assert train.classes == [f"class{i}" for i in range(n_classes)] and test.classes == train.classes


def test_the_folder_is_checksummed_once_while_its_files_stay_the_same(tmp_path, monkeypatch):
    build_folder(tmp_path, "cifar100", monkeypatch)
    checked = []
    real = cifar.md5
    monkeypatch.setattr(cifar, "md5", lambda path: checked.append(path.name) or real(path))
    load_dataset("cifar100", tmp_path, tmp_path / "cache")
    assert sorted(checked) == ["meta", "test", "train"]
    load_dataset("cifar100", tmp_path, tmp_path / "cache")
    assert len(checked) == 3  # the verdict came from the cache
    test = tmp_path / "cifar-100-python" / "test"
    test.write_bytes(test.read_bytes())  # same bytes, a new modification time: checked again
    import os

    os.utime(test, ns=(test.stat().st_atime_ns, test.stat().st_mtime_ns + 10**9))
    load_dataset("cifar100", tmp_path, tmp_path / "cache")
    assert checked[3:] == ["test"]


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_folder_is_refused_with_one_line_before_training(tmp_path, monkeypatch, capsys, damage):
    from rbwa.cli import main

    build_folder(tmp_path / "data", "cifar100", monkeypatch)
    meta = tmp_path / "data" / "cifar-100-python" / "meta"
    if damage == "flip":
        data = bytearray(meta.read_bytes())
        data[len(data) // 2] ^= 0x01
        meta.write_bytes(bytes(data))
    else:
        meta.unlink()
    (tmp_path / "data" / "cifar-100-python.tar.gz").write_bytes(b"")  # an archive beside it is not used instead
    code = main(["train", "--dataset", "cifar100", "--data-dir", str(tmp_path / "data"), "--cache-dir",
                 str(tmp_path / "cache"), "--epochs", "1", "--start-epoch", "0", "--quiet",
                 "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    what = "has the wrong MD5 checksum" if damage == "flip" else "is missing from the unpacked cifar100 folder"
    assert lines[0].startswith(f"error: {meta} {what}") and "restore it from the official archive" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_shared_cifar100_folder_loads_whole(tmp_path, shared_data):
    train, test = load_dataset("cifar100", shared_data("cifar-100-python").parent, tmp_path)
    assert (len(train), len(test), len(train.classes)) == (50000, 10000, 100)
    assert torch.bincount(train.labels).tolist() == [500] * 100 and torch.bincount(test.labels).tolist() == [100] * 100
    assert train.classes[:3] == ["apple", "aquarium_fish", "baby"]


def _serve(payload: bytes, requests: list):
    """A local HTTP server that sends ``payload`` slowly; returns (server, url)."""
    import http.server
    import threading
    import time

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            for i in range(0, len(payload), 4096):
                self.wfile.write(payload[i:i + 4096])
                time.sleep(0.01)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"


def test_concurrent_first_downloads_share_one_download(tmp_path):
    import subprocess
    import sys

    build_archive(tmp_path / "source.tar.gz", "cifar10", per_batch=20)
    payload = (tmp_path / "source.tar.gz").read_bytes()
    requests: list = []
    server, url = _serve(payload, requests)
    data = tmp_path / "data"
    script = (
        "import sys, time; from pathlib import Path; from rbwa.data import cifar\n"
        f"cifar.ARCHIVES['cifar10'].update(url={url!r}, md5={hashlib.md5(payload).hexdigest()!r})\n"
        f"ready = Path({str(tmp_path)!r}) / ('ready' + sys.argv[1]); ready.touch()\n"
        f"while len(list(Path({str(tmp_path)!r}).glob('ready*'))) < 3: time.sleep(0.01)\n"
        f"train, test = cifar.load_cifar('cifar10', Path({str(data)!r}))\n"
        "print(len(train), len(test))\n")
    try:
        procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        server.shutdown()
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in outs]
    assert [out.split() for out, _ in outs] == [["100", "20"]] * 3
    assert len(requests) == 1  # one process downloaded; the others waited for its file
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-python.tar.gz"]  # no temporary left behind


def test_a_download_with_the_wrong_checksum_is_never_renamed_into_place(tmp_path, monkeypatch):
    server, url = _serve(b"not the archive", [])
    monkeypatch.setitem(cifar.ARCHIVES["cifar10"], "url", url)
    try:
        with pytest.raises(UserError, match="the download of .* has the wrong MD5 checksum"):
            load_dataset("cifar10", tmp_path, tmp_path)
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []


# ---- image folders ------------------------------------------------------------------------------
def test_folder_decodes_and_caches(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    train, test = load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache")
    assert train.images.shape == (6, 3, 8, 8) and train.classes == ["a", "b"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images[4, :, 0, 0].tolist() == [41, 42, 43]
    assert len(list((tmp_path / "cache" / "folders").glob("*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(folder, "decode", no_decoding)
    again, _ = load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache")
    assert torch.equal(again.images, train.images)


def test_folder_cache_key_changes_with_contents(tmp_path):
    root = make_folder(tmp_path / "data")
    load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache")
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "new.png")
    train, _ = load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache")
    assert len(train) == 7


def test_folder_image_size(tmp_path):
    root = make_folder(tmp_path / "data")
    Image.new("RGB", (12, 12)).save(root / "train" / "a" / "big.png")
    with pytest.raises(UserError, match="pass --image-size"):
        load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache")
    train, test = load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache", image_size=4)
    assert train.images.shape[1:] == (3, 4, 4) and test.images.shape[1:] == (3, 4, 4)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda r: (r / "train" / "a" / "0.png").write_bytes(b"not an image"), "cannot decode image"),
    (lambda r: (r / "train" / "a" / "1.png").write_bytes((r / "train" / "a" / "1.png").read_bytes()[:30]),
     "cannot decode image"),
    (lambda r: [p.unlink() for p in (r / "test" / "b").iterdir()], "has no .png/.jpg/.jpeg images"),
    (lambda r: (r / "test" / "c").mkdir() or Image.new("RGB", (8, 8)).save(r / "test" / "c" / "x.png"),
     "different class folders"),
])
def test_bad_folders(tmp_path, damage, message):
    root = make_folder(tmp_path / "data")
    damage(root)
    with pytest.raises(UserError, match=message):
        load_dataset(f"folder:{root}", tmp_path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_missing_folder_and_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"folder:{tmp_path}/nothing", tmp_path, tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", tmp_path, tmp_path)


def test_digits_as_32x32_rgb():
    pytest.importorskip("sklearn")
    train, test = load_dataset("digits", Path("."), Path("."))
    assert train.images.shape[1:] == (3, 32, 32) and len(train) + len(test) == 1797
    assert len(test) == 359 and torch.bincount(test.labels).min() >= 35
    assert torch.equal(train.images[:, 0], train.images[:, 1])  # grey, as RGB


# ---- dataset identity: what the data is, not where it lies ------------------------------------------
def test_folder_identity_is_independent_of_the_path_and_follows_the_content(tmp_path):
    a = make_folder(tmp_path / "one" / "pics")
    b = make_folder(tmp_path / "two" / "pics")  # the same files in another place
    ida = folder.folder_identity(a, tmp_path / "cache")
    assert ida == folder.folder_identity(b, tmp_path / "cache")
    assert ida.startswith("folder:pics (6 train + 6 test images, sha256 ") and str(tmp_path) not in ida
    # by hand: the digest covers every file's place in the tree and its bytes, in listing order
    digest = hashlib.sha256(b"rbwa image folder v1\n")
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                digest.update(f"{split}/{c}/{i}.png\n".encode())
                digest.update((a / split / c / f"{i}.png").read_bytes())
    assert ida.endswith(f"sha256 {digest.hexdigest()[:16]})")
    # one changed pixel changes it; the digest is cached per file listing
    Image.new("RGB", (8, 8), (1, 2, 3)).save(b / "test" / "b" / "2.png")
    assert folder.folder_identity(b, tmp_path / "cache") != ida
    assert len(list((tmp_path / "cache" / "folders").glob("*.id.json"))) == 3  # a, b, and b changed


def test_builtin_datasets_are_named_by_name(tmp_path):
    assert dataset_identity("cifar10", str(tmp_path)) == "cifar10"
    assert dataset_identity("digits", str(tmp_path)) == "digits"
    with pytest.raises(UserError, match="does not exist"):
        dataset_identity(f"folder:{tmp_path}/nothing", str(tmp_path))


def test_an_offline_download_error_names_the_unpacked_folder_too(tmp_path, monkeypatch):
    import rbwa.data.cifar as cifar

    def offline(url, dest, md5):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar, "download", offline)
    with pytest.raises(UserError, match=r"network is unreachable.*put it at .*cifar-100-python\.tar\.gz, or put the "
                                        r"unpacked folder cifar-100-python/ \(as torchvision keeps it\) in "):
        cifar.archive_path("cifar100", tmp_path)
