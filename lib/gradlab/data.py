"""Data for the book's experiments. Nothing is downloaded at run time.

* :func:`adding_problem`: the long-range task of Hochreiter & Schmidhuber (1997),
  in the form used by Le, Jaitly & Hinton (2015).
* :func:`teacher_student`: regression targets produced by a fixed random
  "teacher" network, so the best achievable loss is known (the noise level).
* :func:`load_digits`: the 8x8 handwritten digits (UCI ML hand-written digits,
  1,797 images, 10 classes) that ship inside scikit-learn, as torch tensors
  with a fixed stratified train/test split.
* :func:`load_text` / :func:`encode_chars`: a public-domain (CC0) story that
  ships inside gradlab, for character-level language models.

Neighbours: the models trained on these are in :mod:`gradlab.models` (and, for
the text, :mod:`gradlab.lm`, which cuts it into training windows).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from gradlab import _validate

__all__ = ["adding_problem", "teacher_student", "load_digits", "Split", "load_text", "encode_chars"]


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def adding_problem(
    n: int,
    T: int,
    *,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n`` sequences of the adding problem of length ``T``.

    Each input is ``[batch, T, 2]``: channel 0 holds values ``U(0, 1)``,
    channel 1 is a marker that is 1 at exactly two positions, one drawn from the
    first half of the sequence and one from the second half, and 0 elsewhere.
    The target ``y`` (shape ``[n, 1]``) is the sum of the two marked values.
    Predicting the constant 1 gives a mean squared error of 1/6 ≈ 0.167, the
    baseline a model must beat (Var(U1 + U2) = 2/12).

    The answer depends on inputs up to ``T`` steps back, which is what makes
    the gradients of a recurrent network travel through long Jacobian products.
    """
    _validate.integer("n", n, 1)
    _validate.integer("T", T, 2, hint="two markers are needed")
    g = _generator(seed, generator)
    values = torch.rand(n, T, generator=g, dtype=dtype)
    half = T // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, T, (n,), generator=g)
    markers = torch.zeros(n, T, dtype=dtype)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return x, y


def teacher_student(
    n: int,
    in_features: int,
    out_features: int = 1,
    *,
    hidden: int = 32,
    noise: float = 0.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """Inputs ``x ~ N(0, I)`` and targets ``y = teacher(x) + noise * eps``.

    The teacher is a fixed two-layer tanh network with Gaussian weights of
    variance ``1/fan_in``. A student of at least the teacher's size can reach a
    mean squared error of ``noise**2``. Returns ``(x, y, teacher)``.
    """
    _validate.integer("n", n, 1)
    _validate.nonneg("noise", noise, hint="the standard deviation of the noise added to the targets")
    g = _generator(seed, generator)
    w1 = torch.randn(hidden, in_features, generator=g, dtype=dtype) / in_features**0.5
    w2 = torch.randn(out_features, hidden, generator=g, dtype=dtype) / hidden**0.5
    teacher = torch.nn.Sequential(
        torch.nn.Linear(in_features, hidden, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, out_features, bias=False),
    ).to(dtype)
    with torch.no_grad():
        teacher[0].weight.copy_(w1)
        teacher[2].weight.copy_(w2)
    teacher.requires_grad_(False)
    x = torch.randn(n, in_features, generator=g, dtype=dtype)
    with torch.no_grad():
        y = teacher(x) + noise * torch.randn(n, out_features, generator=g, dtype=dtype)
    return x, y, teacher


class Split(NamedTuple):
    """Train/test tensors of a classification data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(test_fraction: float = 0.25, *, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> Split:
    """The scikit-learn digits (1,797 8x8 grey images, 10 classes), split and scaled.

    Pixels are scaled from 0..16 to [0, 1] and flattened to 64 features. The
    split is stratified by class and fixed by ``seed``. The data ship inside
    scikit-learn (``sklearn.datasets.load_digits``), so nothing is downloaded.
    """
    _validate.in_range("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(test_fraction * len(idx)))])
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[np.asarray(test_idx)] = True
    as_x = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return Split(as_x(x[~test_mask]), as_y(y[~test_mask]), as_x(x[test_mask]), as_y(y[test_mask]))


def load_text(name: str = "keeper") -> str:
    """A text shipped inside gradlab (``gradlab/texts/<name>.txt``).

    ``"keeper"``: "The Keeper of the Northern Light", an original story of about
    11,000 characters written for this book and dedicated to the public domain
    (CC0), so a language model can be trained without downloads.
    """
    from importlib import resources

    path = resources.files("gradlab") / "texts" / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.name[:-4] for p in (resources.files("gradlab") / "texts").iterdir()
                           if p.name.endswith(".txt"))
        raise ValueError(f"no text named {name!r}; available: {available}")
    return path.read_text(encoding="utf-8")


def encode_chars(text: str) -> tuple[torch.Tensor, list[str]]:
    """Character-level encoding: ``(codes, vocabulary)`` with ``vocabulary[codes[i]] == text[i]``.
    The vocabulary is the sorted set of characters, so the encoding is deterministic."""
    if not text:
        raise ValueError("text is empty")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), vocab
