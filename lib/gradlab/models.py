"""Small models whose gradients the book studies.

* :class:`MLP`: ``depth`` linear layers of equal ``width`` with a choice of
  activation and initialisation (PyTorch default, Glorot, He, orthogonal or a
  scaled Gaussian), so that depth sweeps are one loop.
* :class:`VanillaRNN`: ``h_t = phi(W h_{t-1} + U x_t + b)`` unrolled by hand over
  ``T`` steps, optionally keeping every hidden state so that ``dL/dh_t`` can be
  read per step.
* :class:`LSTMRegressor`: ``torch.nn.LSTM`` plus a read-out, the usual baseline.
* :func:`single_unit_rnn`: the one-neuron recurrence of Pascanu et al. (2013),
  ``x_t = w * sigmoid(x_{t-1}) + b``, vectorised over grids of ``(w, b)``.

Neighbours: the data these models train on are in :mod:`gradlab.data`, the
tools that watch their gradients in :mod:`gradlab.monitor`; orthogonal
initialisation of whole models is :func:`gradlab.spectral.init_orthogonal_`,
and the case study's character-level models are in :mod:`gradlab.lm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradlab import _validate

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "init_linear_",
    "MLP",
    "VanillaRNN",
    "LSTMRegressor",
    "single_unit_rnn",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}

INITS = ("default", "glorot", "he", "orthogonal", "gaussian")


def init_linear_(layer: nn.Linear, init: str = "default", gain: float = 1.0) -> nn.Linear:
    """Initialise ``layer.weight`` in place (biases are set to zero except for ``"default"``).

    ``fan_in``/``fan_out`` are the weight's ``in_features``/``out_features``
    (PyTorch stores weights as ``[out, in]``).

    ===========  ===============================================  =====================
    init         distribution of each weight                       source
    ===========  ===============================================  =====================
    default      U(-1/sqrt(fan_in), 1/sqrt(fan_in)), var 1/(3 fan_in)  ``nn.Linear``'s own
    glorot       U(+-gain*sqrt(6/(fan_in+fan_out))), var 2/(fan_in+fan_out)  Glorot & Bengio 2010
    he           N(0, gain**2 * 2/fan_in)                          He et al. 2015
    orthogonal   gain * (a matrix with orthonormal rows/columns)   Saxe et al. 2014
    gaussian     N(0, gain**2/fan_in)                              "critical" scale gain
    ===========  ===============================================  =====================

    ``gain`` is ignored for ``"default"``, which reproduces ``nn.Linear.reset_parameters``.
    """
    _validate.one_of("init", init, INITS)
    _validate.positive("gain", gain, finite=True)
    weight = layer.weight
    fan_out, fan_in = weight.shape
    with torch.no_grad():
        if init == "default":
            layer.reset_parameters()
            return layer
        if init == "glorot":
            nn.init.xavier_uniform_(weight, gain=gain)
        elif init == "he":
            weight.normal_(0.0, gain * math.sqrt(2.0 / fan_in))
        elif init == "orthogonal":
            nn.init.orthogonal_(weight, gain=gain)
        else:  # gaussian
            weight.normal_(0.0, gain / math.sqrt(fan_in))
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


class MLP(nn.Module):
    """``depth`` linear layers; activations between them, none after the last.

    Layer ``l`` maps ``h_{l-1}`` to ``h_l = phi(W_l h_{l-1} + b_l)``. The layers
    are kept in :attr:`layers` (an ``nn.ModuleList`` of ``nn.Linear``) so that a
    monitor can attach to each one.

    Parameters
    ----------
    in_features, out_features:
        Input and output sizes.
    width:
        Size of every hidden layer.
    depth:
        Number of linear layers (``depth >= 1``; ``depth - 1`` hidden layers).
    activation:
        ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``.
    init, gain:
        See :func:`init_linear_`.
    bias:
        Whether the linear layers have biases.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        activation: str = "relu",
        init: str = "default",
        gain: float = 1.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("width", width),
                            ("depth", depth), ("out_features", out_features)):
            _validate.integer(name, value, 1)
        _validate.one_of("activation", activation, ACTIVATIONS)
        sizes = [in_features] + [width] * (depth - 1) + [out_features]
        self.layers = nn.ModuleList(
            init_linear_(nn.Linear(a, b, bias=bias), init, gain) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.activation = ACTIVATIONS[activation]()
        self.depth = depth

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """Return the output, and with ``return_hidden=True`` also the list of
        pre-read-out hidden states ``[h_0=x, h_1, ..., h_{depth-1}]``."""
        hidden = [x]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
                hidden.append(x)
        return (x, hidden) if return_hidden else x


class VanillaRNN(nn.Module):
    """Elman RNN unrolled by hand: ``h_t = phi(W h_{t-1} + U x_t + b)``, ``y = V h_T + c``.

    Unrolling in Python (rather than ``nn.RNN``) lets the book read each
    ``h_t`` and its gradient. ``recurrent_init`` sets ``W``:

    * ``"orthogonal"``: ``gain`` times an orthogonal matrix (all singular values = gain);
    * ``"gaussian"``: entries ``N(0, gain**2/hidden_size)``, spectral radius about ``gain``;
    * ``"identity"``: ``gain * I`` (Le et al. 2015, with ``nonlinearity="relu"``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        nonlinearity: str = "tanh",
        recurrent_init: str = "orthogonal",
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("output_size", output_size)):
            _validate.integer(name, value, 1)
        _validate.one_of("nonlinearity", nonlinearity, ("tanh", "relu", "linear"))
        _validate.one_of("recurrent_init", recurrent_init, ("orthogonal", "gaussian", "identity"))
        self.hidden_size = hidden_size
        self.input = nn.Linear(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.readout = nn.Linear(hidden_size, output_size)
        self.phi = ACTIVATIONS[nonlinearity]()
        with torch.no_grad():
            if recurrent_init == "orthogonal":
                init_linear_(self.recurrent, "orthogonal", gain)
            elif recurrent_init == "gaussian":
                init_linear_(self.recurrent, "gaussian", gain)
            else:
                self.recurrent.weight.copy_(gain * torch.eye(hidden_size))
            self.input.bias.zero_()

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """``x`` has shape ``[batch, T, input_size]``. Returns ``y`` of shape
        ``[batch, output_size]`` read from ``h_T``; with ``return_hidden=True``
        also the list ``[h_0, ..., h_T]`` (each ``[batch, hidden]``, ``h_0 = 0``)."""
        if x.dim() != 3:
            raise ValueError(f"x must have shape [batch, T, input_size], got {tuple(x.shape)}")
        h = x.new_zeros(x.shape[0], self.hidden_size)
        hidden = [h]
        drive = self.input(x)  # U x_t + b for all t at once
        for t in range(x.shape[1]):
            h = self.phi(self.recurrent(h) + drive[:, t])
            hidden.append(h)
        y = self.readout(h)
        return (y, hidden) if return_hidden else y


class LSTMRegressor(nn.Module):
    """``torch.nn.LSTM`` (batch first) with a linear read-out of the last hidden state.

    With the forget-gate bias set to ``forget_bias`` (1.0 is the common choice,
    Gers et al. 2000), the cell state's Jacobian along time is close to the
    identity at initialisation, which is why LSTMs explode less than
    vanilla RNNs (Hochreiter & Schmidhuber 1997).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, forget_bias: float = 1.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.readout = nn.Linear(hidden_size, output_size)
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    # gate order in PyTorch: input, forget, cell, output
                    p[hidden_size:2 * hidden_size].fill_(forget_bias)
                elif name.startswith("bias_hh"):
                    p[hidden_size:2 * hidden_size].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.readout(out[:, -1])


def single_unit_rnn(w: torch.Tensor, b: torch.Tensor, x0: float = 0.5, steps: int = 50) -> torch.Tensor:
    """Iterate ``x_t = w * sigmoid(x_{t-1}) + b`` for ``steps`` steps from ``x0``.

    ``w`` and ``b`` broadcast against each other, so a grid of parameters runs
    in one call; gradients flow to both. This is the single-neuron model whose
    loss surface Pascanu, Mikolov & Bengio (2013, Fig. 6) use to show the
    "cliff" of exploding gradients: near ``w = 5`` the map has a saddle-node
    bifurcation, and across a narrow band of ``b`` the end point ``x_steps``
    jumps from one attractor to the other.
    """
    _validate.integer("steps", steps, 1)
    w, b = torch.broadcast_tensors(torch.as_tensor(w), torch.as_tensor(b))
    x = torch.full_like(w, float(x0))
    for _ in range(steps):
        x = w * torch.sigmoid(x) + b
    return x
