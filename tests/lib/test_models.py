import math

import pytest
import torch
from torch import nn

from gradlab.models import MLP, LSTMRegressor, VanillaRNN, init_linear_, single_unit_rnn


@pytest.mark.parametrize("init, expected_var", [
    ("default", lambda fi, fo, g: 1 / (3 * fi)),
    ("glorot", lambda fi, fo, g: g**2 * 2 / (fi + fo)),
    ("he", lambda fi, fo, g: g**2 * 2 / fi),
    ("gaussian", lambda fi, fo, g: g**2 / fi),
])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_init_variances(init, expected_var, gain):
    torch.manual_seed(0)
    fan_in, fan_out = 400, 300
    layer = init_linear_(nn.Linear(fan_in, fan_out), init, gain)
    var = layer.weight.var().item()
    assert var == pytest.approx(expected_var(fan_in, fan_out, gain), rel=0.05)
    if init != "default":
        assert torch.count_nonzero(layer.bias) == 0


def test_default_init_matches_nn_linear():
    torch.manual_seed(3)
    ref = nn.Linear(20, 10)
    ref.reset_parameters()
    torch.manual_seed(3)
    ours = init_linear_(nn.Linear(20, 10), "default")  # re-draws like reset_parameters
    assert torch.equal(ref.weight, ours.weight) and torch.equal(ref.bias, ours.bias)


def test_orthogonal_init_has_unit_singular_values():
    layer = init_linear_(nn.Linear(32, 32), "orthogonal", gain=1.5)
    s = torch.linalg.svdvals(layer.weight.detach())
    assert torch.allclose(s, torch.full_like(s, 1.5), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(init="xavier"), "init must be .default., .glorot.*got .xavier."),
    (dict(gain=0.0), "gain must be"),
    (dict(gain=float("nan")), "gain must be"),
])
def test_init_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        init_linear_(nn.Linear(3, 3), **kwargs)


def test_mlp_shapes_and_hidden():
    model = MLP(7, 16, 4, 3, activation="tanh", init="glorot")
    assert len(model.layers) == 4
    y, hidden = model(torch.randn(5, 7), return_hidden=True)
    assert y.shape == (5, 3)
    assert [h.shape[-1] for h in hidden] == [7, 16, 16, 16]


def test_mlp_matches_manual_forward():
    torch.manual_seed(0)
    model = MLP(4, 8, 3, 2, activation="relu", init="he")
    x = torch.randn(6, 4)
    h = x
    for i, layer in enumerate(model.layers):
        h = h @ layer.weight.T + layer.bias
        if i < 2:
            h = torch.relu(h)
    assert torch.allclose(model(x), h)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(depth=0), ValueError, "depth must be an int >= 1, got 0"),
    (dict(width=2.5), TypeError, "width must be an int >= 1, got float 2.5"),
    (dict(activation="gelu"), ValueError, "activation must be .relu.*got .gelu."),
])
def test_mlp_bad_arguments(kwargs, exc, match):
    args = dict(in_features=3, width=4, depth=2, out_features=1) | kwargs
    with pytest.raises(exc, match=match):
        MLP(**args)


def test_rnn_matches_torch_rnn():
    torch.manual_seed(0)
    ours = VanillaRNN(3, 5, 2, nonlinearity="tanh", recurrent_init="gaussian", gain=1.2)
    ref = nn.RNN(3, 5, nonlinearity="tanh", batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(ours.input.weight)
        ref.bias_ih_l0.copy_(ours.input.bias)
        ref.weight_hh_l0.copy_(ours.recurrent.weight)
        ref.bias_hh_l0.zero_()
    x = torch.randn(4, 9, 3)
    y, hidden = ours(x, return_hidden=True)
    out, h_n = ref(x)
    assert len(hidden) == 10
    assert torch.allclose(hidden[-1], h_n[0], atol=1e-6)
    assert torch.allclose(torch.stack(hidden[1:], 1), out, atol=1e-6)
    assert torch.allclose(y, ours.readout(h_n[0]), atol=1e-6)


def test_rnn_identity_init_and_errors():
    rnn = VanillaRNN(2, 4, 1, nonlinearity="relu", recurrent_init="identity", gain=0.9)
    assert torch.allclose(rnn.recurrent.weight, 0.9 * torch.eye(4))
    with pytest.raises(ValueError, match="shape"):
        rnn(torch.randn(3, 2))
    with pytest.raises(ValueError, match="recurrent_init"):
        VanillaRNN(2, 4, 1, recurrent_init="zeros")
    with pytest.raises(ValueError, match="nonlinearity"):
        VanillaRNN(2, 4, 1, nonlinearity="sigmoid")


def test_lstm_forget_bias_and_shape():
    model = LSTMRegressor(2, 6, 1, forget_bias=1.0)
    b = model.lstm.bias_ih_l0.detach()
    assert torch.all(b[6:12] == 1.0)
    assert torch.all(model.lstm.bias_hh_l0.detach()[6:12] == 0.0)
    assert model(torch.randn(3, 5, 2)).shape == (3, 1)


def test_single_unit_rnn_matches_loop_and_grad():
    w, b = torch.tensor([5.0, 2.0], dtype=torch.float64), torch.tensor([-2.5, 0.1], dtype=torch.float64)
    out = single_unit_rnn(w, b, x0=0.5, steps=50)
    for i in range(2):
        x = 0.5
        for _ in range(50):
            x = w[i].item() / (1 + math.exp(-x)) + b[i].item()
        assert out[i].item() == pytest.approx(x, rel=1e-12)
    bb = torch.tensor(-2.6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(single_unit_rnn(torch.tensor(5.0, dtype=torch.float64), bb), bb)
    eps = 1e-7
    fd = (single_unit_rnn(torch.tensor(5.0, dtype=torch.float64), bb.detach() + eps)
          - single_unit_rnn(torch.tensor(5.0, dtype=torch.float64), bb.detach() - eps)) / (2 * eps)
    assert g.item() == pytest.approx(fd.item(), rel=1e-5)
    with pytest.raises(ValueError, match="steps"):
        single_unit_rnn(w, b, steps=0)
