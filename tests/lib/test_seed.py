import random

import numpy as np
import pytest
import torch

from gradlab import seed_everything


def draw():
    return random.random(), np.random.rand(), torch.rand(3).tolist(), torch.randn(2, 2).sum().item()


def test_same_seed_same_numbers():
    seed_everything(123)
    a = draw()
    seed_everything(123)
    assert draw() == a


def test_different_seed_different_numbers():
    seed_everything(1)
    a = draw()
    seed_everything(2)
    assert draw() != a


def test_returns_seeded_generator():
    assert seed_everything(5).random() == np.random.default_rng(5).random()


def test_deterministic_mode_is_set():
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark
    seed_everything(0, deterministic=False)  # leaves the flags as they were
    assert torch.are_deterministic_algorithms_enabled()


def test_training_is_bit_identical():
    def train():
        seed_everything(7)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 5), torch.randn(32, 1)
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train(), train()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                      ("0", TypeError), (True, TypeError)])
def test_bad_seed(bad, exc):
    with pytest.raises(exc, match="seed must"):
        seed_everything(bad)
