"""data/text.py: character corpora, their split, and the windows an epoch trains on."""

import hashlib

import pytest
import torch

from rbwa.data.loader import TokenLoader
from rbwa.data.text import SHAKESPEARE, load_text, read_text, split_corpus, windows
from rbwa.errors import UserError


def test_tiny_shakespeare_is_checked_and_split_as_nanogpt_does(shared_data):
    corpus = load_text("shakespeare", shared_data("tinyshakespeare").parent)
    assert len(corpus.vocab) == 65 and (len(corpus.train), len(corpus.val)) == (1_003_854, 111_540)
    assert corpus.decode(corpus.train[:14]) == "First Citizen:"


def test_a_text_file_round_trips_and_a_damaged_shakespeare_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabcabcd")  # 10 characters: the first 9 train, the last 1 validates
    corpus = load_text(f"text:{path}", tmp_path)
    assert corpus.vocab == ["a", "b", "c", "d"] and corpus.train.tolist() == [0, 1, 2] * 3
    assert corpus.val.tolist() == [3] and corpus.decode(corpus.encode("dab")) == "dab"
    with pytest.raises(UserError, match="characters the vocabulary lacks: 'z'"):
        corpus.encode("az")
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / SHAKESPEARE["path"]).write_text("not the bard")
    with pytest.raises(UserError, match="is not nanoGPT's Tiny Shakespeare"):
        load_text("shakespeare", tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_text(tmp_path / "bad.txt")
    assert read_text(path, hashlib.sha256(b"abcabcabcd").hexdigest()) == "abcabcabcd"
    with pytest.raises(UserError, match="unknown text 'poems'"):
        load_text("poems", tmp_path)


def test_an_epoch_visits_every_window_once_in_an_order_set_by_the_seed():
    tokens = torch.arange(101)  # (101 - 1) // 10 = 10 windows of 10 tokens, each with its 10 next tokens
    loader = TokenLoader(tokens, context=10, batch_size=4, shuffle=True, seed=3)
    first = list(loader)
    assert len(loader) == len(first) == 3 and [len(x) for x, _ in first] == [4, 4, 2]
    starts = torch.cat([x[:, 0] for x, _ in first])
    assert sorted(starts.tolist()) == list(range(0, 100, 10))
    assert all(torch.equal(y, x + 1) for x, y in first)  # targets: the next token of every input token
    again = TokenLoader(tokens, context=10, batch_size=4, shuffle=True, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # the same seed, the same order
    second = torch.cat([x[:, 0] for x, _ in loader])  # the next epoch: another order
    assert not torch.equal(starts, second) and sorted(second.tolist()) == sorted(starts.tolist())
    # two processes: each its contiguous share of every global batch, together the one-process batches
    ranks = [list(TokenLoader(tokens, 10, 4, shuffle=True, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert all(torch.equal(torch.cat([a[0], b[0]]), c[0]) for a, b, c in zip(*ranks, first))
    x, y = windows(tokens, torch.tensor([90]), 10)
    assert x.tolist() == [list(range(90, 100))] and y[0, -1].item() == 100
    with pytest.raises(UserError, match="holds no window of 10 tokens"):
        TokenLoader(torch.arange(10), context=10, batch_size=4)


def test_split_corpus_by_hand():
    corpus = split_corpus("hello", fraction=0.6)  # vocab e h l o; 3 characters train
    assert corpus.vocab == ["e", "h", "l", "o"] and corpus.train.tolist() == [1, 0, 2]
    assert corpus.val.tolist() == [2, 3]
