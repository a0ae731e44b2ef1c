"""gradlab._validate: one message style (name, value, what to do), TypeError for the wrong
kind of value, ValueError for a value out of range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradlab import _validate as v


def test_real_accepts_numbers_and_one_element_tensors():
    assert v.real("x", 3) == 3.0 and v.real("x", np.float32(0.5)) == 0.5
    assert v.real("x", torch.tensor(0.25, dtype=torch.float64)) == 0.25
    with pytest.raises(TypeError, match="x must be a number, got str '1.0'"):
        v.real("x", "1.0")
    with pytest.raises(TypeError, match="x must be a number, got bool True"):
        v.real("x", True)
    with pytest.raises(ValueError, match=r"x must be a number or a 1-element tensor, got a tensor of shape \(2,\)"):
        v.real("x", torch.ones(2))
    with pytest.raises(TypeError, match="x must be a real number"):
        v.real("x", torch.tensor(1j))


@pytest.mark.parametrize("check, value, message", [
    (lambda x: v.nonneg("lr", x), -0.1, "lr must be >= 0, got -0.1"),
    (lambda x: v.nonneg("lr", x), math.nan, "lr must be >= 0, got nan"),
    (lambda x: v.positive("eps", x), 0.0, "eps must be > 0, got 0.0"),
    (lambda x: v.positive("max_norm", x, finite=True), math.inf, "max_norm must be a finite number > 0, got inf"),
    (lambda x: v.unit("betas[1]", x), 1.0, r"betas\[1\] must be in \[0, 1\), got 1.0"),
    (lambda x: v.in_range("q", x, 0.0, 1.0, low_open=True), 0, r"q must be in \(0, 1\], got 0"),
    (lambda x: v.in_range("f", x, 1.0, low_open=True, hint="a factor"), 1, "f must be > 1, got 1; a factor"),
])
def test_range_messages(check, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check(value)


def test_range_checks_return_floats_and_allow_infinity_unless_finite():
    assert v.nonneg("lr", math.inf) == math.inf
    assert v.unit("b", 0) == 0.0 and isinstance(v.unit("b", 0), float)


def test_torch_says_puts_torchs_words_first():
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1.0; lr must be > 0$"):
        v.positive("lr", -1.0, torch_says="Invalid learning rate")


def test_integer():
    assert v.integer("n", np.int64(3), 1) == 3 and type(v.integer("n", np.int64(3), 1)) is int
    with pytest.raises(TypeError, match="^rank must be an int >= 1, got float 2.0$"):
        v.integer("rank", 2.0, 1)
    with pytest.raises(TypeError, match="^rank must be an int >= 1, got bool True$"):
        v.integer("rank", True, 1)
    with pytest.raises(ValueError, match="^rank must be an int >= 1, got 0; rank 1 is the strongest$"):
        v.integer("rank", 0, 1, hint="rank 1 is the strongest")
    with pytest.raises(ValueError, match=r"^k must be an int in \[0, 3\], got 4$"):
        v.integer("k", 4, 0, 3)


def test_one_of_and_pair():
    assert v.one_of("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match="^mode must be 'a', 'b' or 'c', got 'd'$"):
        v.one_of("mode", "d", ("a", "b", "c"))
    with pytest.raises(ValueError, match="^mode must be 'a', got 'd'$"):
        v.one_of("mode", "d", ("a",))
    assert v.pair("betas", [0.9, 0.99], "(b1, b2)") == (0.9, 0.99)
    for bad in ((0.9,), 0.9, "ab", (1, 2, 3)):
        with pytest.raises(ValueError, match=r"^betas must be a pair \(b1, b2\), got "):
            v.pair("betas", bad, "(b1, b2)")


def test_norm_order():
    assert v.norm_order("norm_type", "inf") == math.inf and v.norm_order("norm_type", 2) == 2.0
    for bad in ("fro", 0, -1.0, math.nan, None, True):
        with pytest.raises(ValueError, match=r"^norm_type must be a number > 0 or inf \(2.0 for the Euclidean"):
            v.norm_order("norm_type", bad)


def test_floating_param():
    v.floating_param("Opt", torch.zeros(2))
    v.floating_param("Opt", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="^Opt updates floating-point parameters, got one of dtype torch.int64; "):
        v.floating_param("Opt", torch.zeros(2, dtype=torch.int64))
