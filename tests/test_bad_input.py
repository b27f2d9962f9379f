"""Every bad input: exit status 2, one `error:` line naming the problem and the fix, nothing created or changed."""

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from rbwa.cli import main
from rbwa.data import cifar

try:
    import sklearn  # noqa: F401

    HAVE_SKLEARN = True
except ImportError:  # the cases that must load the digits dataset are skipped, and only those
    HAVE_SKLEARN = False
SMALL = ["--width", "0.0625", "--epochs", "1", "--start-epoch", "0", "--quiet"]


def folder(root: Path, size: int = 8) -> Path:
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (size, size), (i, 2 * i, 3 * i)).save(root / split / c / f"{i}.png")
    return root


def with_folder(damage):
    def make(tmp: Path) -> list[str]:
        root = folder(tmp / "data")
        damage(root)
        return ["train", "--dataset", f"folder:{root}", "--cache-dir", str(tmp / "cache"), *SMALL]
    return make


def with_archive(tmp: Path) -> list[str]:
    (tmp / "archives").mkdir()
    with tarfile.open(tmp / "archives" / "cifar-10-python.tar.gz", "w:gz"):
        pass
    return ["train", "--dataset", "cifar10", "--data-dir", str(tmp / "archives"), *SMALL]


def with_truncated_pickle(tmp: Path) -> list[str]:
    import io
    import pickle

    (tmp / "archives").mkdir()
    path = tmp / "archives" / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps({b"label_names": [b"a"] * 10})[:-4]
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cifar.ARCHIVES["cifar10"]["md5"] = cifar.md5(path)  # restored by the fixture below
    return ["train", "--dataset", "cifar10", "--data-dir", str(tmp / "archives"), *SMALL]


def with_run(damage):
    """An existing digits run with one thing wrong; the command resumes it."""
    def make(tmp: Path) -> list[str]:
        argv = ["train", "--dataset", "digits", "--train-subset", "100", "--test-subset", "50", *SMALL,
                "--epochs", "2", "--out", str(tmp / "run")]
        assert main(argv) == 0
        (tmp / "run" / "summary.json").unlink()
        damage(tmp / "run")
        return [*argv, "--resume"]
    return make


def with_yaml(text):
    def make(tmp: Path) -> list[str]:
        (tmp / "c.yaml").write_text(text)
        return ["train", "--config", str(tmp / "c.yaml")]
    return make


def with_dcp_metadata(tmp: Path) -> list[str]:
    (tmp / "dcp").mkdir()
    (tmp / "dcp" / ".metadata").write_bytes(b"not a pickle")
    return ["merge", str(tmp / "dcp"), "--lawa", "1", "--out", str(tmp / "merged")]


def merge_of(build, *flags: str, out: str = "{tmp}/merged.pt"):
    """rbwa merge of the checkpoints ``build(tmp)`` writes (it returns the paths to give), with ``flags``."""
    def make(tmp: Path) -> list[str]:
        return ["merge", *map(str, build(tmp)), *flags, "--out", out]
    return make


def two_state_dicts(tmp: Path, names: tuple[str, ...] = ("step-10", "step-20")) -> list[Path]:
    (tmp / "ckpts").mkdir()
    for i, name in enumerate(names):
        torch.save({"w": torch.full((2,), float(i))}, tmp / "ckpts" / f"{name}.pt")
    return [tmp / "ckpts"]


def text_named_pt(text: str):
    def build(tmp: Path) -> list[Path]:
        (tmp / "notes.pt").write_text(text)
        return [tmp / "notes.pt"]
    return build


def state_dicts_beside_an_hf_folder(tmp: Path) -> list[Path]:
    from safetensors.torch import save_file

    (tmp / "hf" / "checkpoint-5").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, tmp / "hf" / "checkpoint-5" / "model.safetensors")
    return [*two_state_dicts(tmp), tmp / "hf" / "checkpoint-5"]


def plain(*argv):
    return lambda tmp: list(argv)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


CASES = {
    "unknown dataset": (plain("train", "--dataset", "mnist"), "unknown dataset 'mnist'"),
    "unknown model": (plain("train", "--model", "resnet50"), "unknown model 'resnet50'"),
    "unknown method": (plain("train", "--method", "adam"), "unknown method 'adam'"),
    "unknown compile mode": (plain("train", "--compile", "--compile-mode", "fast"), "unknown compile mode 'fast'"),
    "compile mode without --compile": (plain("train", "--compile-mode", "reduce-overhead"),
                                       "compile mode reduce-overhead needs --compile"),
    "unknown preset": (plain("reproduce", "fig3", "--preset", "huge"), "unknown preset 'huge'"),
    "unknown experiment": (plain("reproduce", "fig9"), "unknown experiment 'fig9'"),
    "zero epochs": (plain("train", "--epochs", "0"), "epochs must be > 0"),
    "negative epochs": (plain("train", "--epochs", "-3"), "epochs must be > 0"),
    "non-integer epochs": (plain("train", "--epochs", "ten"), "argument --epochs: invalid int value: 'ten'"),
    "zero batch size": (plain("train", "--batch-size", "0"), "batch size must be > 0"),
    "negative lr": (plain("train", "--lr", "-0.1"), "lr must be > 0"),
    "zero lr": (plain("train", "--lr", "0"), "lr must be > 0"),
    "beta 1": (plain("train", "--method", "rbwa-e", "--beta", "1"), r"beta must be in \[0, 1\)"),
    "negative beta": (plain("train", "--beta", "-0.5"), r"beta must be in \[0, 1\)"),
    "start epoch = epochs": (plain("train", "--method", "rbwa", "--epochs", "5", "--start-epoch", "5"),
                             r"start epoch must be in \[0, epochs\) = \[0, 5\), got 5"),
    "zero width": (plain("train", "--width", "0"), "width must be > 0"),
    "negative width": (plain("train", "--width", "-1"), "width must be > 0"),
    "zero seeds": (plain("reproduce", "fig3", "--seeds", "0"), "--seeds must be >= 1"),
    "subset larger than dataset": (plain("train", "--dataset", "digits", "--train-subset", "100000"),
                                   "train subset of 100000 is larger than the dataset"),
    "subset smaller than classes": (plain("train", "--dataset", "digits", "--test-subset", "3"),
                                    r"test subset of 3 is smaller than the number of classes \(10\)"),
    "missing data folder": (plain("train", "--dataset", "folder:/nonexistent/data"), "does not exist"),
    "folder without images": (with_folder(lambda r: [p.unlink() for p in r.glob("*/*/*")]), "has no .png/.jpg/.jpeg"),
    "empty class folder": (with_folder(lambda r: [p.unlink() for p in (r / "train" / "b").iterdir()]),
                           "class folder .*train/b has no .png/.jpg/.jpeg images"),
    "no class folders": (with_folder(lambda r: [p.unlink() for p in r.glob("test/*/*")] and
                                     [p.rmdir() for p in (r / "test").iterdir()]), "test has no class folders"),
    "mismatched classes": (with_folder(lambda r: (r / "test" / "b").rename(r / "test" / "c")),
                           "train and test have different class folders"),
    "corrupt jpeg": (with_folder(lambda r: (r / "train" / "a" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")),
                     "cannot decode image .*x.jpg"),
    "truncated png": (with_folder(lambda r: truncate(r / "test" / "a" / "1.png")), "cannot decode image .*1.png"),
    "text file named png": (with_folder(lambda r: (r / "train" / "b" / "notes.png").write_text("hello")),
                            "cannot decode image .*notes.png"),
    "image of the wrong size": (with_folder(lambda r: Image.new("RGB", (9, 9)).save(r / "train" / "a" / "big.png")),
                                "is 9x9 but .* is 8x8; pass --image-size"),
    "archive with wrong checksum": (with_archive, "wrong MD5 checksum"),
    "truncated pickle in archive": (with_truncated_pickle, "the archive is damaged, download it again"),
    "truncated checkpoint": (with_run(lambda run: truncate(run / "checkpoint.pt")), "checkpoint .* is unreadable"),
    "foreign checkpoint": (with_run(lambda run: torch.save({"weights": 1}, run / "checkpoint.pt")),
                           "is not an rbwa checkpoint"),
    "resume with another config": (with_run(lambda run: (run / "config.json").write_text(
        json.dumps({**json.loads((run / "config.json").read_text()), "model": "vgg16"}))),
        r"different config \(model\)"),
    "output under a file": (plain("train", "--dataset", "digits", "--train-subset", "100", "--out", "{tmp}/file/run"),
                            "cannot write to --out"),
    "yaml unknown key": (with_yaml("methd: rbwa\n"), r"unknown config key\(s\): methd"),
    "yaml wrong type": (with_yaml("epochs: [1, 2]\n"), "'epochs' must be of type int"),
    "yaml not a mapping": (with_yaml("just text\n"), "must hold a mapping"),
    "cuda without a GPU": (plain("train", "--device", "cuda"), "no CUDA GPU is available"),
    "zero snapshot period": (plain("train", "--snapshot-every", "0"), "snapshot every must be >= 1, got 0"),
    "two snapshot schedules": (plain("train", "--snapshot-every", "5", "--snapshots-per-epoch", "2"),
                               "give --snapshot-every or --snapshots-per-epoch, not both"),
    "more snapshots than steps": (plain("train", "--dataset", "digits", "--train-subset", "100", "--batch-size", "50",
                                        "--snapshots-per-epoch", "3"),
                                  "snapshots per epoch must be at most the 2 steps of an epoch, got 3"),
    "unknown snapshot dtype": (plain("train", "--snapshot-dtype", "float16"), "unknown snapshot dtype 'float16'"),
    "report of nothing": (plain("report", "{tmp}/nothing"), "is not a directory"),
    "fsdp with an image model": (plain("train", "--fsdp"), "--fsdp shards --model gpt"),
    "fsdp with a side copy": (plain("train", "--fsdp", "--model", "gpt", "--dataset", "shakespeare", "--augment",
                                    "none", "--method", "ema"),
                              "--fsdp does not run --method ema .* use --method rbwa-e --write-back 0"),
    "merge --out under a file": (merge_of(two_state_dicts, "--lawa", "1", out="{tmp}/file/merged.pt"),
                                 "cannot write --out .*/file/merged.pt: .*/file is a file, not a folder"),
    "merge --out unwritable": (merge_of(two_state_dicts, "--lawa", "1", out="/proc/rbwa-merged.pt"),
                               "cannot write --out /proc/rbwa-merged.pt"),
    "merge negative --swa-from": (merge_of(two_state_dicts, "--swa-from", "-100"),
                                  "--swa-from is a step, >= 0; got -100"),
    "merge --lawa 0": (merge_of(two_state_dicts, "--lawa", "0"),
                       r"--lawa K must be >= 1 \(the last K checkpoints\), got 0"),
    "merge --ema-half-life 0": (merge_of(two_state_dicts, "--ema-half-life", "0"),
                                "--ema-half-life must be a number of steps > 0, got 0.0"),
    "merge text file named .pt": (merge_of(text_named_pt("hello world, these are notes\n"), "--lawa", "1"),
                                  r"notes.pt is not a readable checkpoint: torch.load cannot read it \(\w+\); it is "
                                  "damaged, truncated, or not a file torch.save wrote$"),
    "merge one letter named .pt": (merge_of(text_named_pt("e"), "--lawa", "1"),
                                   r"notes.pt is not a readable checkpoint: .* not a file torch.save wrote$"),
    "merge state dicts beside an hf folder": (merge_of(state_dicts_beside_an_hf_folder, "--lawa", "1"),
                                              r"different formats \(.*ckpts/step-20.pt is torch, .*hf/checkpoint-5 is "
                                              r"hf\); merge one series of one format"),
    "merge a name without a step": (merge_of(lambda tmp: two_state_dicts(tmp, ("model_9", "model_final")), "--lawa",
                                             "1"), "model_final.pt: no step recorded in it, .* --in-order"),
    "merge --in-order with --swa-from": (merge_of(lambda tmp: [p for d in two_state_dicts(tmp) for p in sorted(
        d.iterdir())], "--in-order", "--swa-from", "10"), "need the step of every checkpoint, unknown here"),
    "unreadable distributed checkpoint": (with_dcp_metadata, "dcp: its torch.distributed.checkpoint metadata is not "
                                                            "readable"),
}


@pytest.fixture(autouse=True)
def _restore_archive_md5():
    saved = dict(cifar.ARCHIVES["cifar10"])
    yield
    cifar.ARCHIVES["cifar10"].update(saved)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(tmp_path, capsys, case):
    make, message = CASES[case]
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "file").write_text("a regular file")
    try:
        argv = [a.replace("{tmp}", str(tmp_path)) for a in make(tmp_path)]
    except AssertionError:  # the case first trains a digits run, and cannot without scikit-learn
        if not HAVE_SKLEARN:
            pytest.skip("this case trains a digits run first, which needs scikit-learn")
        raise
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if not HAVE_SKLEARN and "needs scikit-learn" in err:  # only the cases that must load digits to fail
        pytest.skip("this case loads digits, which needs scikit-learn")
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing created or changed


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_without_scikit_learn_only_the_digits_cases_are_skipped(tmp_path):
    """Run this table in a Python where `import sklearn` fails: the cases that do not train on digits still run."""
    import subprocess
    import sys

    # in this one process (`-o addopts=` drops the ini's xdist workers, which would import scikit-learn)
    code = ("import sys; sys.modules['sklearn'] = None; import pytest; "
            f"sys.exit(pytest.main(['-p', 'no:cacheprovider', '-o', 'addopts=', {__file__ + '::test_bad_input'!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    last = done.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", last).group(1))
    skipped = int(re.search(r"(\d+) skipped", last).group(1))
    assert done.returncode == 0 and "failed" not in last, done.stdout[-2000:]
    assert passed + skipped == len(CASES) and 0 < skipped < passed, last
