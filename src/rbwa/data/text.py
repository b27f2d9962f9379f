"""Character-level text for language models: Tiny Shakespeare (nanoGPT's benchmark) or any UTF-8 file.

The vocabulary is the text's own distinct characters, sorted; the first ``TRAIN_FRACTION`` of the text is the
training split and the rest the validation split (nanoGPT's customary 90/10 split). An epoch is one pass over the
training text in non-overlapping windows of ``context`` tokens (``data.loader.TokenLoader``), in an order shuffled
by the seed, so epochs, a start epoch and a fold counter keep the meaning they have for images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from rbwa.errors import UserError

TRAIN_FRACTION = 0.9
# nanoGPT's shakespeare_char input.txt: where it lies under --data-dir, and what it must be
SHAKESPEARE = {"path": "tinyshakespeare/input.txt",
               "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"}


@dataclass
class Corpus:
    """A text as token ids: its vocabulary (sorted distinct characters) and its two splits."""

    vocab: list[str]
    train: torch.Tensor  # int64 token ids
    val: torch.Tensor

    def first(self, train_windows: int | None, val_windows: int | None, context: int) -> Corpus:
        """The corpus cut to the first windows of ``context`` tokens of each split (None: the whole split): a
        text's subsets, for a run measured in seconds."""
        def cut(tokens: torch.Tensor, n: int | None) -> torch.Tensor:
            return tokens if n is None else tokens[:n * context + 1]

        return Corpus(self.vocab, cut(self.train, train_windows), cut(self.val, val_windows))

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise UserError(f"the text holds characters the vocabulary lacks: {''.join(unknown)!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, tokens: torch.Tensor) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)


def split_corpus(text: str, fraction: float = TRAIN_FRACTION) -> Corpus:
    """The vocabulary and the (first ``fraction``, rest) splits of ``text``. Pure."""
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(tokens) * fraction)
    return Corpus(vocab, tokens[:cut], tokens[cut:])


def read_text(path: Path, sha256: str | None = None) -> str:
    """The UTF-8 text in ``path``, checked against ``sha256`` where given; one line for a file that is not that."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the text {path} ({e.strerror})") from e
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path} is not nanoGPT's Tiny Shakespeare (its SHA-256 is not {sha256[:16]}...); restore it "
                        "or give another text as text:PATH")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if len(text) < 2:
        raise UserError(f"{path} holds {len(text)} characters; a language model needs at least 2")
    return text


def load_text(name: str, data_dir: Path) -> Corpus:
    """``shakespeare`` (``DATA_DIR/tinyshakespeare/input.txt``, checked) or ``text:PATH`` (any UTF-8 file)."""
    if name == "shakespeare":
        return split_corpus(read_text(Path(data_dir) / SHAKESPEARE["path"], SHAKESPEARE["sha256"]))
    if name.startswith("text:") and len(name) > 5:
        return split_corpus(read_text(Path(name[5:]).expanduser()))
    raise UserError(f"unknown text {name!r}; choose shakespeare or text:PATH")


def text_identity(path: Path) -> str:
    """A text file as run names and configs record it: its name, size and content digest, never its path."""
    data = read_text(path).encode("utf-8")
    return f"text:{path.name} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]})"


def windows(tokens: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``tokens[s : s + context]`` and targets ``tokens[s + 1 : s + context + 1]`` for each start, as
    (len(starts), context) tensors on the tokens' device."""
    offsets = torch.arange(context, device=tokens.device)
    at = starts.to(tokens.device)[:, None] + offsets
    return tokens[at], tokens[at + 1]


def window_count(tokens: int, context: int) -> int:
    """The non-overlapping windows of ``context`` tokens, each with its next-token targets, in a split."""
    count = (tokens - 1) // context
    if count < 1:
        raise UserError(f"a split of {tokens} tokens holds no window of {context} tokens and its targets; "
                        "use a shorter --context")
    return count
