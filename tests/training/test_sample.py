"""rbwa sample: text from a trained GPT run, seeded and deterministic; its average where it keeps one."""

from rbwa.cli import main
from rbwa.training.config import make_config
from rbwa.training.loop import train

TEXT = "to be, or not to be: that is the question.\n" * 60


def _run(tmp_path, method):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    cfg = make_config(dataset=f"text:{text}", model="gpt", context=16, layers=1, heads=2, embedding=16,
                      optimizer="adamw", lr=3e-3, batch_size=16, epochs=2, start_epoch=1, method=method,
                      eval_batch_size=64, out=str(tmp_path / method))
    train(cfg, progress=False, log=lambda line: None)
    return str(tmp_path / method), f"text:{text}"


def test_a_sample_continues_the_prompt_deterministically_from_the_weights_or_the_average(tmp_path, capsys):
    run, dataset = _run(tmp_path, "ema")
    argv = ["sample", run, "--dataset", dataset, "--tokens", "40", "--prompt", "to be", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("to be") and len(first) == len("to be") + 40 + 1  # and print's new line
    assert set(first) <= set(TEXT)  # only the text's characters
    assert main(argv) == 0 and capsys.readouterr().out == first  # the same seed, the same text
    assert main([*argv[:-1], "4"]) == 0 and capsys.readouterr().out != first
    assert main([*argv, "--average"]) == 0 and capsys.readouterr().out != first  # the EMA's own text


def test_sample_refuses_in_one_line(tmp_path, capsys):
    run, dataset = _run(tmp_path, "rbwa")
    assert main(["sample", run, "--dataset", dataset, "--average"]) == 2
    assert "keeps no average apart from its weights" in capsys.readouterr().err
    assert main(["sample", run, "--dataset", dataset, "--prompt", "xyz"]) == 2
    assert "characters the vocabulary lacks: 'xyz'" in capsys.readouterr().err
    assert main(["sample", run]) == 2
    assert "give that file with --dataset text:PATH" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("something else entirely")
    assert main(["sample", run, "--dataset", f"text:{other}"]) == 2
    assert "but the run trained on text:text.txt" in capsys.readouterr().err
    assert main(["sample", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_the_average_of_an_adamw_run_never_written_back_is_read_by_name(tmp_path, capsys):
    """Defect 13: RBWA's averages are kept by the optimizer's index, and AdamW's decay groups list the matrices first;
    zipped with named_parameters() order they crashed every AdamW --write-back 0 run."""
    import torch

    from rbwa.models.gpt import GPT
    from rbwa.training.sample import _average

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    cfg = make_config(dataset=f"text:{text}", model="gpt", context=16, layers=1, heads=2, embedding=16,
                      optimizer="adamw", lr=3e-3, batch_size=16, epochs=2, start_epoch=1, method="rbwa", write_back=0,
                      eval_batch_size=64, out=str(tmp_path / "run"))
    train(cfg, progress=False, log=lambda line: None)
    assert main(["sample", str(tmp_path / "run"), "--dataset", f"text:{text}", "--average", "--tokens", "20"]) == 0
    assert len(capsys.readouterr().out) == 1 + 20 + 1
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    model = GPT(len(set(TEXT)), 16, 1, 2, 16)  # the vocabulary: the characters of the text
    averaged = _average(ckpt, model, tmp_path / "run")
    for name, p in model.named_parameters():
        assert averaged[name].shape == p.shape, name
        assert not torch.equal(averaged[name], ckpt["model"][name]), name  # the average, not the live weights


def test_a_side_average_that_has_not_begun_is_refused(tmp_path, capsys):
    """Defect 14: an EMA checkpoint from before averaging began (no fold yet) sampled the untrained initial weights,
    exit 0; refused in one line, in today's format and in rbwa 0.3's (an AveragedModel state with n_averaged 0)."""
    import torch

    run, dataset = _run(tmp_path, "ema")
    path = tmp_path / "ema" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    for side in ({"averages": {}, "counts": {}, "folds": 0, "settings": {}},
                 {**{f"module.{k}": v for k, v in ckpt["model"].items()}, "n_averaged": torch.tensor(0)}):
        torch.save({**ckpt, "setup": {**ckpt["setup"], "side": side}}, path)
        assert main(["sample", run, "--dataset", dataset, "--average"]) == 2
        assert "keeps no average apart from its weights" in capsys.readouterr().err
