import pytest
import torch

from gradlab.data import adding_problem, encode_chars, load_digits, load_text, teacher_student


def test_adding_problem_structure():
    x, y = adding_problem(500, 20, seed=1)
    assert x.shape == (500, 20, 2) and y.shape == (500, 1)
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2)
    first = markers[:, :10].argmax(1)
    second = markers[:, 10:].argmax(1) + 10
    assert torch.all(markers[:, :10].sum(1) == 1) and torch.all(markers[:, 10:].sum(1) == 1)
    rows = torch.arange(500)
    assert torch.allclose(y[:, 0], x[rows, first, 0] + x[rows, second, 0])
    # the constant-1 baseline has MSE close to Var(U1 + U2) = 1/6
    assert ((y - 1) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.03)


def test_adding_problem_seeded():
    a = adding_problem(10, 8, seed=3)
    b = adding_problem(10, 8, seed=3)
    c = adding_problem(10, 8, seed=4)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("n, T, exc, match", [(0, 5, ValueError, "n must be an int >= 1, got 0"),
                                              (5, 1, ValueError, "T must be an int >= 2, got 1"),
                                              (2.0, 5, TypeError, "n must be an int >= 1, got float 2.0")])
def test_adding_problem_bad_args(n, T, exc, match):
    with pytest.raises(exc, match=match):
        adding_problem(n, T)


def test_teacher_student_noise_floor():
    x, y, teacher = teacher_student(4000, 10, 2, noise=0.1, seed=0)
    assert x.shape == (4000, 10) and y.shape == (4000, 2)
    residual = y - teacher(x)
    assert residual.std().item() == pytest.approx(0.1, rel=0.05)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="noise"):
        teacher_student(10, 3, noise=-1)


def test_load_digits_split():
    split = load_digits(test_fraction=0.25, seed=0)
    n_train, n_test = len(split.y_train), len(split.y_test)
    assert n_train + n_test == 1797
    assert n_test == pytest.approx(0.25 * 1797, abs=10)
    assert split.x_train.shape[1] == 64
    assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0
    # stratified: every class in both parts, in about the same proportion
    for y in (split.y_train, split.y_test):
        counts = torch.bincount(y, minlength=10).float()
        assert counts.min() > 0.8 * counts.mean()
    again = load_digits(seed=0)
    assert torch.equal(again.y_test, split.y_test)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_shipped_text_round_trips():
    text = load_text()
    assert len(text) > 10_000 and text.startswith("The Keeper of the Northern Light")
    codes, vocab = encode_chars(text)
    assert "".join(vocab[i] for i in codes.tolist()) == text
    assert vocab == sorted(vocab) and len(vocab) == len(set(text))
    with pytest.raises(ValueError, match="available"):
        load_text("no-such-text")
    with pytest.raises(ValueError, match="empty"):
        encode_chars("")
