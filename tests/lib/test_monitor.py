import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab.models import MLP
from gradlab.monitor import (
    GradNormMonitor,
    NonFiniteError,
    assert_finite,
    detect_spikes,
    find_nonfinite,
    global_grad_norm,
    grad_norms,
    progress,
)


def _model_with_grads(seed=0):
    torch.manual_seed(seed)
    model = MLP(5, 8, 3, 2)
    torch.nn.functional.mse_loss(model(torch.randn(4, 5)), torch.randn(4, 2)).backward()
    return model


def test_grad_norms_match_torch():
    model = _model_with_grads()
    norms = grad_norms(model)
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(p.grad.norm().item(), rel=1e-6)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
def test_global_norm_matches_clip_grad_norm(norm_type):
    model = _model_with_grads(1)
    ours = global_grad_norm(model, norm_type)
    ref = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()], norm_type)
    assert ours == pytest.approx(ref.item(), rel=1e-5)


def test_global_norm_no_grads_is_zero():
    assert global_grad_norm([torch.zeros(3, requires_grad=True)]) == 0.0


def _huge_grads(value=1e20):
    params = [torch.zeros(10, requires_grad=True), torch.zeros(5, requires_grad=True)]
    for p in params:
        p.grad = torch.full(p.shape, value)
    return params


def test_global_norm_of_huge_float32_gradients_is_finite():
    """Float32 gradients of 1e20: 1e20 * sqrt(15), where float32 arithmetic overflows to inf
    (the failure chapter 1 teaches); torch on float64 copies is the judge."""
    params = _huge_grads()
    ours = global_grad_norm(params)
    assert ours == pytest.approx(1e20 * math.sqrt(15), rel=1e-7)
    assert ours == pytest.approx(torch.nn.utils.get_total_norm([p.grad.double() for p in params]).item(), rel=1e-13)
    assert math.isinf(torch.nn.utils.get_total_norm([p.grad for p in params]).item())
    assert math.isinf(global_grad_norm(params, dtype=None))  # the gradients' own dtype: torch's result
    norms = grad_norms(params)
    assert norms["0"] == pytest.approx(1e20 * math.sqrt(10), rel=1e-7)
    assert norms["1"] == pytest.approx(1e20 * math.sqrt(5), rel=1e-7)


def test_global_norm_bad_norm_type_names_the_argument():
    with pytest.raises(ValueError, match="norm_type must be a number > 0 or inf"):
        global_grad_norm(_huge_grads(1.0), "fro")


def test_monitor_records_params_and_outputs():
    torch.manual_seed(0)
    model = MLP(5, 8, 3, 1)
    x = torch.randn(4, 5)
    with GradNormMonitor(model, modules=model.layers) as mon:
        for _ in range(2):
            model.zero_grad()
            h1 = model.layers[0](x)
            h1.retain_grad()
            out = model.layers[2](model.activation(model.layers[1](model.activation(h1))))
            out.sum().backward()
    assert len(mon.param["layers.0.weight"]) == 2
    assert mon.param["layers.0.weight"][-1] == pytest.approx(model.layers[0].weight.grad.norm().item())
    assert mon.output["layers.0"][-1] == pytest.approx(h1.grad.norm().item())
    names, arr = mon.as_array("output")
    assert names == ["layers.0", "layers.1", "layers.2"] and arr.shape == (2, 3)
    # hooks are gone after the with block
    model.zero_grad()
    model(x).sum().backward()
    assert len(mon.param["layers.0.weight"]) == 2


def test_monitor_latest():
    model = MLP(3, 4, 2, 1)
    mon = GradNormMonitor(model)
    model(torch.randn(2, 3)).sum().backward()
    mon.remove()
    assert set(mon.latest()) == {n for n, _ in model.named_parameters()}


def test_find_and_assert_nonfinite():
    model = _model_with_grads()
    assert find_nonfinite(model) == []
    assert_finite(model, loss=torch.tensor(1.0))
    model.layers[1].bias.grad[0] = float("nan")
    assert find_nonfinite(model) == ["layers.1.bias"]
    with pytest.raises(NonFiniteError, match="layers.1.bias.*lower the learning rate"):
        assert_finite(model)
    with pytest.raises(NonFiniteError, match="the loss is inf"):
        assert_finite(model, loss=float("inf"))
    with pytest.raises(ValueError, match="check must be"):
        find_nonfinite(model, check="both")


def test_detect_spikes():
    values = [1.0] * 30 + [50.0] + [1.0] * 5 + [float("nan")]
    assert detect_spikes(values, window=20, factor=10) == [30, 36]
    assert detect_spikes([1.0, 2.0, 3.0]) == []
    with pytest.raises(ValueError, match="window"):
        detect_spikes(values, window=0)
    with pytest.raises(ValueError, match="factor"):
        detect_spikes(values, factor=1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=60),
       st.floats(min_value=1.5, max_value=100))
def test_detect_spikes_properties(values, factor):
    spikes = detect_spikes(values, window=10, factor=factor)
    assert 0 not in spikes  # nothing to compare the first value with
    scaled = detect_spikes([v * 7.0 for v in values], window=10, factor=factor)
    assert spikes == scaled  # invariant to the loss's units


def test_progress_writes_stdout_only(capsys):
    assert list(progress(range(3), enabled=True, desc="x")) == [0, 1, 2]
    out = capsys.readouterr()
    assert out.err == "" and "3/3" in out.out
    assert list(progress(range(2), enabled=False)) == [0, 1]
    assert capsys.readouterr().out == ""
