"""The case study: a character-level language model that blows up, and its fixes.

A small recurrent (LSTM or GRU) or transformer language model over characters,
a training loop that logs what the book's chapters taught us to watch, and the
knobs of the usual remedies:

* :class:`CharRNN` / :class:`CharTransformer`: the models;
* :func:`char_splits`, :func:`random_windows`: data from a text shipped in
  :func:`gradlab.data.load_text` (no downloads);
* :func:`warmup_factor`: the linear learning-rate warm-up of Goyal et al. (2017);
* :class:`TrainConfig` / :func:`train_char_lm`: one training run, returning a
  :class:`TrainRecord` of losses, global and per-group gradient norms,
  ``sigma_max`` of the recurrent weight, and Adam's state (the effective step
  ``lr / (sqrt(v_hat) + eps)`` and the relative update size);
* :func:`fix_stages`, :func:`summarize`: the case study's cumulative fixes and
  its one-row-per-configuration summary;
* :func:`evaluate`, :func:`sample`;
* :func:`lstm_unroll`, :func:`lstm_step_jacobian`, :func:`gate_saturation`,
  :func:`probe_lstm`: the LSTM layer one time step at a time, to look inside a
  backward pass (gradient through time, step Jacobians, saturated gates).

The loop uses the book's own parts: :class:`gradlab.optim.Adam` /
:class:`~gradlab.optim.AdamW`, :func:`gradlab.clip.clip_grad_norm_`,
:func:`gradlab.spectral.power_iteration` and the overflow-safe global norm of
:func:`gradlab.monitor.global_grad_norm`.

Neighbours: the text it trains on ships with :mod:`gradlab.data`; the signals
it logs are those of :mod:`gradlab.monitor`, the remedies it applies those of
:mod:`gradlab.clip` and :mod:`gradlab.optim`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from gradlab import _validate
from gradlab import clip as _clip
from gradlab import optim as _optim
from gradlab import spectral as _spectral
from gradlab._tensors import global_norm
from gradlab.data import encode_chars
from gradlab.device import resolve_device

__all__ = [
    "CharRNN",
    "CharTransformer",
    "char_splits",
    "random_windows",
    "warmup_factor",
    "TrainConfig",
    "TrainRecord",
    "build_model",
    "param_group_of",
    "train_char_lm",
    "fix_stages",
    "summarize",
    "evaluate",
    "sample",
    "LSTMUnroll",
    "lstm_unroll",
    "lstm_step_jacobian",
    "gate_saturation",
    "LSTMProbe",
    "probe_lstm",
]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
_INITS = ("default", "forget_bias", "orthogonal")


class CharRNN(nn.Module):
    """Embedding -> LSTM/GRU -> linear read-out, predicting the next character.

    ``init``:

    * ``"default"``: PyTorch's, every weight and bias uniform in
      :math:`\\pm 1/\\sqrt{H}`;
    * ``"forget_bias"`` (LSTM only): as default, but the forget-gate bias set to 1
      (Gers et al. 2000; Jozefowicz et al. 2015), so the cell starts by keeping
      its memory. PyTorch has two bias vectors per layer (``bias_ih``,
      ``bias_hh``); their forget slices are set to 1 and 0;
    * ``"orthogonal"``: each gate's block of the recurrent weight orthogonal
      (gain 1), biases zero, the forget bias 1 (LSTM).
    """

    def __init__(self, vocab_size: int, hidden_size: int = 256, embedding_dim: int = 32,
                 num_layers: int = 1, cell: str = "lstm", init: str = "default") -> None:
        super().__init__()
        _validate.one_of("cell", cell, _CELLS)
        _validate.one_of("init", init, _INITS)
        if init == "forget_bias" and cell != "lstm":
            raise ValueError(f"a {cell.upper()} has no forget gate, so init='forget_bias' would change "
                             "nothing; use it with cell='lstm', or init='orthogonal' for a GRU")
        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size),
                            ("embedding_dim", embedding_dim), ("num_layers", num_layers)):
            _validate.integer(name, value, 1)
        self.cell = cell
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = _CELLS[cell](embedding_dim, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)
        self._init(init)

    def _init(self, init: str) -> None:
        if init == "default":
            return
        H = self.rnn.hidden_size
        gates = 4 if self.cell == "lstm" else 3
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if init == "orthogonal" and name.startswith("weight_hh"):
                    for k in range(gates):
                        nn.init.orthogonal_(p[k * H:(k + 1) * H])
                if init == "orthogonal" and name.startswith("bias"):
                    p.zero_()
                if self.cell == "lstm" and name.startswith("bias"):
                    # PyTorch's LSTM gate order is (input, forget, cell, output).
                    p[H:2 * H] = 1.0 if name.startswith("bias_ih") else 0.0

    def forward(self, x: torch.Tensor, state=None):
        """``x``: ``[batch, time]`` character codes. Returns ``(logits, state)``."""
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


class CharTransformer(nn.Module):
    """A small causal (decoder-only) transformer over characters, pre-LayerNorm,
    with learned positions: the model of the case study's full (GPU) mode."""

    def __init__(self, vocab_size: int, d_model: int = 128, nhead: int = 4, num_layers: int = 2,
                 max_len: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: torch.Tensor, state=None):
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.max_len}; "
                             "build the model with a larger max_len")
        pos = torch.arange(T, device=x.device)
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device)
        h = self.blocks(self.embed(x) + self.pos(pos), mask=mask, is_causal=True)
        return self.head(self.norm(h)), None


def char_splits(text: str, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(train_codes, val_codes, vocabulary)``: the first ``1 - val_fraction`` of
    the text for training, the rest (a contiguous tail, unseen) for validation."""
    _validate.in_range("val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
    codes, vocab = encode_chars(text)
    split = int(round(len(codes) * (1 - val_fraction)))
    return codes[:split], codes[split:], vocab


def random_windows(codes: torch.Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows: inputs ``codes[i:i+T]`` and targets ``codes[i+1:i+T+1]``."""
    if seq_len + 1 > len(codes):
        raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} characters, "
                         f"the text has {len(codes)}; use a shorter seq_len")
    start = torch.randint(0, len(codes) - seq_len, (batch_size,), generator=generator,
                          device=codes.device)
    idx = start[:, None] + torch.arange(seq_len + 1, device=codes.device)
    win = codes[idx]
    return win[:, :-1], win[:, 1:]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: the learning rate of (0-based) ``step`` is
    ``lr * min(1, (step + 1) / warmup_steps)``; ``warmup_steps=0`` means none.
    Use it as ``LambdaLR(opt, lambda s: warmup_factor(s, w))``."""
    _validate.integer("warmup_steps", warmup_steps, 0)
    if warmup_steps == 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


@dataclass
class TrainConfig:
    """One training run. ``clip=None`` means no clipping; ``weight_decay`` is
    coupled (Adam's L2) with ``optimizer="adam"`` and decoupled with ``"adamw"``."""

    model: str = "lstm"  # "lstm", "gru" or "transformer"
    hidden_size: int = 256
    embedding_dim: int = 32
    num_layers: int = 1
    init: str = "default"
    optimizer: str = "adam"
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    clip: float | None = None
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 64
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        _validate.one_of("model", self.model, (*_CELLS, "transformer"))
        _validate.one_of("optimizer", self.optimizer, ("adam", "adamw"))
        if self.clip is not None:
            _validate.positive("clip", self.clip, hint="the max_norm of global-norm clipping, or None for none")
        for name in ("steps", "batch_size", "seq_len", "eval_every"):
            _validate.integer(name, getattr(self, name), 1)
        warmup_factor(0, self.warmup_steps)


@dataclass
class TrainRecord:
    """Per-step logs of a run (lists of floats, one per step taken).

    ``groups`` holds the per-group gradient norms (before clipping); ``sigma_hh``
    the largest singular value of the first recurrent weight; ``adam_step`` the
    median over the recurrent weight's entries of ``lr_t / (sqrt(v_hat) + eps)``;
    ``rel_update`` its ``||delta W|| / ||W||``; ``sigma_hh_init`` is ``sigma_max``
    before training. ``nonfinite_step`` is the step at which the loss or a
    gradient first became NaN/inf (the run stops there).
    """

    config: dict
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    groups: dict[str, list[float]] = field(default_factory=dict)
    sigma_hh: list[float] = field(default_factory=list)
    adam_step: list[float] = field(default_factory=list)
    rel_update: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    sigma_hh_init: float = float("nan")
    nonfinite_step: int | None = None
    seconds: float = 0.0


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The model a :class:`TrainConfig` asks for (seeded with ``config.seed``)."""
    torch.manual_seed(config.seed)
    if config.model == "transformer":
        return CharTransformer(vocab_size, config.hidden_size, num_layers=config.num_layers,
                               max_len=max(256, config.seq_len))
    return CharRNN(vocab_size, config.hidden_size, config.embedding_dim, config.num_layers,
                   cell=config.model, init=config.init)


def param_group_of(name: str) -> str:
    """The group a parameter's name falls in for the per-group norms:
    ``embedding``, ``recurrent`` (``weight_hh*``), ``input`` (``weight_ih*``),
    ``bias`` (recurrent biases), ``head``, or ``other`` (transformer blocks)."""
    if name.startswith("embed") or name.startswith("pos"):
        return "embedding"
    if name.startswith("head") or name.startswith("norm"):
        return "head"
    if ".weight_hh" in name:
        return "recurrent"
    if ".weight_ih" in name:
        return "input"
    if name.startswith("rnn.bias"):
        return "bias"
    return "other"


@torch.no_grad()
def evaluate(model: nn.Module, codes: torch.Tensor, seq_len: int, batch_size: int = 64) -> float:
    """Mean cross-entropy (nats per character) over non-overlapping windows of ``codes``."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = (len(codes) - 1) // seq_len
    if n < 1:
        raise ValueError(f"need more than seq_len={seq_len} characters to evaluate, got {len(codes)}")
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)
    win = codes[idx].to(dev)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        x, y = win[i:i + batch_size, :-1], win[i:i + batch_size, 1:]
        logits, _ = model(x)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def sample(model: nn.Module, vocab: list[str], prompt: str, length: int = 200,
           temperature: float = 0.8, generator: torch.Generator | None = None) -> str:
    """Continue ``prompt`` by ``length`` characters drawn from the model."""
    index = {c: i for i, c in enumerate(vocab)}
    missing = sorted(set(prompt) - set(index))
    if missing:
        raise ValueError(f"prompt has characters outside the vocabulary: {missing}")
    _validate.positive("temperature", temperature)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.tensor([[index[c] for c in prompt]], device=dev)
    out, state = [], None
    context = x
    for _ in range(length):
        if isinstance(model, CharTransformer):
            logits, _ = model(context[:, -model.max_len:])
        else:
            logits, state = model(x, state)
        p = torch.softmax(logits[0, -1].double() / temperature, dim=-1).cpu()
        nxt = int(torch.multinomial(p, 1, generator=generator))
        out.append(vocab[nxt])
        x = torch.tensor([[nxt]], device=dev)
        context = torch.cat([context, x], dim=1)
    model.train(was_training)
    return prompt + "".join(out)


def _recurrent_weight(model: nn.Module) -> torch.Tensor | None:
    for name, p in model.named_parameters():
        if ".weight_hh" in name:
            return p
    for name, p in model.named_parameters():
        if name.endswith("self_attn.in_proj_weight"):
            return p
    return None


def train_char_lm(config: TrainConfig, train_codes: torch.Tensor, val_codes: torch.Tensor,
                  vocab_size: int, device: torch.device | str = "cpu",
                  model: nn.Module | None = None) -> tuple[nn.Module, TrainRecord]:
    """Train a character model with Adam/AdamW, optional warm-up and clipping.

    Every step logs the training loss, the global gradient norm and its
    per-group parts (before clipping), ``sigma_max`` of the recurrent weight
    (one warm-started power iteration per step), and Adam's effective step on
    it. Stops at the first non-finite loss or gradient and records the step.
    Returns ``(model, record)``.
    """
    dev = resolve_device(device)
    if model is None:
        model = build_model(config, vocab_size)
    model = model.to(dev)
    train_codes = train_codes.to(dev)
    gen = torch.Generator(device=dev).manual_seed(config.seed)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    groups = {n: param_group_of(n) for n in names}
    opt_cls = _optim.AdamW if config.optimizer == "adamw" else _optim.Adam
    opt = opt_cls(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    W = _recurrent_weight(model)
    beta2 = config.betas[1]
    rec = TrainRecord(config=asdict(config))
    rec.groups = {g: [] for g in dict.fromkeys(groups.values())}
    if W is not None:
        v_pow = torch.randn(W.shape[1], generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64).to(dev)
        # Exact at the start (a random matrix's top singular values are close, so power
        # iteration converges slowly there); then one warm-started power step pair per step.
        rec.sigma_hh_init = float(torch.linalg.matrix_norm(W.detach().double(), ord=2))
        _, _, v_pow = _spectral.power_iteration(W.detach().double(), v_pow, num_iters=20)
    t0 = time.perf_counter()
    model.train()
    for step in range(config.steps):
        x, y = random_windows(train_codes, config.batch_size, config.seq_len, gen)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # accumulated in float64 (global_norm's default): in float32 the spikes this loop
        # is meant to log would overflow to inf
        by_group = {g: [] for g in rec.groups}
        for n, p in zip(names, params):
            if p.grad is not None:
                by_group[groups[n]].append(p.grad.detach())
        norms = {g: global_norm(gs) for g, gs in by_group.items()}
        total = float(global_norm(norms.values()))  # the norm of the groups' norms
        rec.loss.append(float(loss.detach()))
        rec.grad_norm.append(total)
        for g, v in norms.items():
            rec.groups[g].append(float(v))
        if not (math.isfinite(rec.loss[-1]) and math.isfinite(total)):
            rec.nonfinite_step = step
            break
        if config.clip is not None:
            _clip.clip_grad_norm_(params, config.clip)
        lr = config.lr * warmup_factor(step, config.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        rec.lr.append(lr)
        W_before = W.detach().clone() if W is not None else None
        opt.step()
        if W is not None:
            with torch.no_grad():
                v_hat = opt.state[W]["exp_avg_sq"] / (1 - beta2 ** (step + 1))
                eff = lr / (v_hat.sqrt() + opt.param_groups[0]["eps"])
                rec.adam_step.append(float(eff.median()))
                rec.rel_update.append(float((W.detach() - W_before).norm() / W_before.norm()))
                sigma, _, v_pow = _spectral.power_iteration(W.detach().double(), v_pow, num_iters=2)
                rec.sigma_hh.append(float(sigma))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            rec.val_steps.append(step + 1)
            rec.val_loss.append(evaluate(model, val_codes, config.seq_len))
    rec.seconds = time.perf_counter() - t0
    return model, rec


def fix_stages(base: TrainConfig, *, clip: float = 1.0, warmup_steps: int = 30,
               weight_decay: float = 0.1) -> dict[str, TrainConfig]:
    """The case study's repairs, each stage keeping the previous ones:
    ``bare recipe`` (``base``), ``+ clipping`` (global norm ``clip``),
    ``+ warm-up`` (linear over ``warmup_steps``), ``+ AdamW`` (decoupled
    ``weight_decay``) and, for an LSTM, ``+ forget bias 1``."""
    stages = {"bare recipe": base}
    stages["+ clipping"] = replace(base, clip=clip)
    stages["+ warm-up"] = replace(stages["+ clipping"], warmup_steps=warmup_steps)
    stages["+ AdamW"] = replace(stages["+ warm-up"], optimizer="adamw", weight_decay=weight_decay)
    if base.model == "lstm":
        stages["+ forget bias 1"] = replace(stages["+ AdamW"], init="forget_bias")
    return stages


def summarize(records: list[TrainRecord], spike_factor: float = 100.0) -> dict:
    """One row for a configuration trained from several seeds: ``spiked runs``
    (runs whose gradient norm rose above ``spike_factor`` times its value at step
    0), ``runs``, and medians over the runs of the peak gradient norm (``peak |g|``),
    the training loss (mean of the last 20 steps), the final validation loss and the
    final ``sigma_max`` of the recurrent weight. A run that hit NaN/inf counts as
    spiked, with infinite peak and losses."""
    if not records:
        raise ValueError("summarize needs at least one TrainRecord")

    from statistics import median

    inf = float("inf")
    peak = [inf if r.nonfinite_step is not None else max(r.grad_norm) for r in records]
    return {
        "spiked runs": sum(p > spike_factor * r.grad_norm[0] for p, r in zip(peak, records)),
        "runs": len(records),
        "peak |g|": median(peak),
        "train loss": median([inf if r.nonfinite_step is not None else sum(r.loss[-20:]) / len(r.loss[-20:])
                              for r in records]),
        "val loss": median([r.val_loss[-1] if r.val_loss and r.nonfinite_step is None else inf
                            for r in records]),
        "sigma_max W_hh": median([r.sigma_hh[-1] if r.sigma_hh else float("nan") for r in records]),
    }


# ----------------------------------------------------------------------------- inside an LSTM


@dataclass
class LSTMUnroll:
    """The LSTM layer of a one-layer :class:`CharRNN`, one time step at a time.

    ``output``: ``[B, T, H]``, the hidden states stacked (what ``nn.LSTM`` returns);
    ``h``: the ``T`` hidden states ``h_t`` (``[B, H]`` each), with ``retain_grad()``
    so that ``h[t].grad`` is ``dL/dh_t`` after a backward pass; ``c``: the cell
    states ``[B, T, H]`` (detached); ``gates``: the gate activations ``[B, T, 4, H]``
    in PyTorch's order (input ``i``, forget ``f``, cell ``g``, output ``o``; detached).
    """

    output: torch.Tensor
    h: list[torch.Tensor]
    c: torch.Tensor
    gates: torch.Tensor


def _lstm_layer(model: nn.Module) -> nn.LSTM:
    rnn = getattr(model, "rnn", None)
    if not isinstance(rnn, nn.LSTM) or rnn.num_layers != 1 or rnn.bidirectional or rnn.proj_size:
        raise ValueError("expected a CharRNN with one unidirectional LSTM layer (cell='lstm', "
                         f"num_layers=1), got {type(model).__name__} with rnn={rnn!r}")
    return rnn


def lstm_unroll(model: nn.Module, x: torch.Tensor) -> LSTMUnroll:
    r"""Run the LSTM layer of ``model`` (a one-layer LSTM :class:`CharRNN`) on the
    character codes ``x`` (``[B, T]``) one step at a time, from a zero state:

    .. math::
        i, f, g, o = \sigma(z_i), \sigma(z_f), \tanh(z_g), \sigma(z_o), \quad
        z = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh},

        c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t)

    (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000, in
    ``torch.nn.LSTM``'s gate order). The output equals ``model.rnn(model.embed(x))[0]``
    up to rounding; unlike the fused call it keeps every ``h_t`` for its gradient.
    """
    rnn = _lstm_layer(model)
    emb = model.embed(x)
    B, T, _ = emb.shape
    h = emb.new_zeros(B, rnn.hidden_size)
    c = torch.zeros_like(h)
    hs, cs, gates = [], [], []
    for t in range(T):
        z = (emb[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0
             + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0)
        zi, zf, zg, zo = z.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
        c = f * c + i * g
        h = o * torch.tanh(c)
        if h.requires_grad:
            h.retain_grad()
        hs.append(h)
        cs.append(c.detach())
        gates.append(torch.stack([i, f, g, o], dim=1).detach())
    return LSTMUnroll(torch.stack(hs, 1), hs, torch.stack(cs, 1), torch.stack(gates, 1))


def lstm_step_jacobian(weight_hh: torch.Tensor, gates: torch.Tensor, c_prev: torch.Tensor,
                       c: torch.Tensor) -> torch.Tensor:
    r"""Jacobian of one LSTM step with respect to its state, in closed form.

    The state is ``s_t = (h_t, c_t)`` (``2H`` numbers); with the gate activations
    ``gates = (i, f, g, o)`` of that step (``[..., 4, H]``), the previous and new cell
    states ``c_prev``, ``c`` (``[..., H]``) and ``W_hh = [W_i; W_f; W_g; W_o]``
    (``[4H, H]``):

    .. math::
        \frac{\partial c_t}{\partial h_{t-1}} = D_f W_f + D_i W_i + D_g W_g, \quad
        D_f = \mathrm{diag}(c_{t-1} f (1-f)),\ D_i = \mathrm{diag}(g\, i (1-i)),\
        D_g = \mathrm{diag}(i (1-g^2)),

        \frac{\partial c_t}{\partial c_{t-1}} = \mathrm{diag}(f), \quad
        \frac{\partial h_t}{\partial s_{t-1}} = \mathrm{diag}(o (1-\tanh^2 c_t))
        \frac{\partial c_t}{\partial s_{t-1}}
        + \big[\mathrm{diag}(\tanh(c_t)\, o (1-o)) W_o,\ 0\big].

    Returns ``[..., 2H, 2H]``, rows and columns ordered ``(h, c)``. A saturated gate
    (its derivative near 0) removes its block of ``W_hh`` from the Jacobian, which is
    how the gates decide how much of ``W_hh`` the gradient through time sees.
    """
    H = weight_hh.shape[1]
    if weight_hh.shape[0] != 4 * H:
        raise ValueError(f"weight_hh must be [4H, H] (an LSTM's recurrent weight), got {tuple(weight_hh.shape)}")
    if gates.shape[-2:] != (4, H) or c_prev.shape[-1] != H or c.shape != c_prev.shape:
        raise ValueError(f"gates must be [..., 4, {H}] and c_prev, c [..., {H}] with the same shape, got "
                         f"{tuple(gates.shape)}, {tuple(c_prev.shape)}, {tuple(c.shape)}")
    i, f, g, o = gates.unbind(-2)
    W_i, W_f, W_g, W_o = weight_hh.split(H, dim=0)
    dc_dh = ((c_prev * f * (1 - f))[..., :, None] * W_f + (g * i * (1 - i))[..., :, None] * W_i
             + (i * (1 - g * g))[..., :, None] * W_g)
    dc_dc = torch.diag_embed(f)
    tc = torch.tanh(c)
    a = o * (1 - tc * tc)
    dh_dh = a[..., :, None] * dc_dh + (tc * o * (1 - o))[..., :, None] * W_o
    dh_dc = torch.diag_embed(a * f)
    top = torch.cat([dh_dh, dh_dc], dim=-1)
    bottom = torch.cat([dc_dh, dc_dc], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def gate_saturation(gates: torch.Tensor, threshold: float = 0.1) -> float:
    r"""Fraction of gate units that are saturated: derivative below ``threshold``
    times its largest value, i.e. :math:`4\sigma(1-\sigma) <` ``threshold`` for the
    sigmoid gates ``i, f, o`` and :math:`1 - \tanh^2 <` ``threshold`` for ``g``
    (``gates``: activations ``[..., 4, H]`` in the order of :class:`LSTMUnroll`).
    With ``threshold = 0.1`` a sigmoid gate counts as saturated beyond
    :math:`|z| \approx 3.6`, the ``tanh`` gate beyond :math:`|z| \approx 1.8`."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if gates.dim() < 2 or gates.shape[-2] != 4:
        raise ValueError(f"gates must be [..., 4, H] (i, f, g, o), got {tuple(gates.shape)}")
    i, f, g, o = gates.unbind(-2)
    deriv = torch.stack([4 * i * (1 - i), 4 * f * (1 - f), 1 - g * g, 4 * o * (1 - o)])
    return float((deriv < threshold).double().mean())


@dataclass
class LSTMProbe:
    """One batch's backward pass seen from inside an LSTM layer (:func:`probe_lstm`).

    ``grad_h[t]`` is ``||dL/dh_t||`` (Frobenius norm over the batch); ``growth`` is
    ``grad_h[0] / grad_h[-1]``, how much larger the gradient is at the start of the
    window than at its end; ``saturation`` is :func:`gate_saturation` over the batch
    and window; ``jacobian_norms`` are the spectral norms of the step Jacobians
    (:func:`lstm_step_jacobian`) at the sampled sequences and positions; ``loss`` is
    the batch's cross-entropy.
    """

    grad_h: list[float]
    growth: float
    saturation: float
    jacobian_norms: list[float]
    loss: float


def probe_lstm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, positions=None,
               sequences: int = 2) -> LSTMProbe:
    """Backward pass of the cross-entropy of ``model`` on the batch ``(x, y)``
    through :func:`lstm_unroll`, and what it shows: the gradient norm at every
    hidden state, its growth through the window, the fraction of saturated gates,
    and the spectral norms of the step Jacobians for the first ``sequences`` of
    the batch at ``positions`` (default: every 16th position from 1). The model's
    parameter gradients are left as they were."""
    rnn = _lstm_layer(model)
    T = x.shape[1]
    if positions is None:
        positions = range(1, T, 16)
    positions = list(positions)
    if not positions or min(positions) < 1 or max(positions) >= T:
        raise ValueError(f"positions must be time steps in [1, {T - 1}] (the step Jacobian at t "
                         f"needs c_(t-1)), got {positions}")
    if not 1 <= sequences <= x.shape[0]:
        raise ValueError(f"sequences must be in [1, {x.shape[0]}] (the batch size), got {sequences}")
    run = lstm_unroll(model, x)
    logits = model.head(run.output)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    grads = torch.autograd.grad(loss, run.h)  # leaves the parameters' .grad alone
    grad_h = [float(g.double().norm()) for g in grads]
    with torch.no_grad():
        t = torch.tensor(positions, device=x.device)
        J = lstm_step_jacobian(rnn.weight_hh_l0.detach(), run.gates[:sequences, t],
                               run.c[:sequences, t - 1], run.c[:sequences, t])
        J = J.flatten(0, -3)
        # sigma_max(J)^2 is the top eigenvalue of J^T J: a symmetric eigensolver is several
        # times cheaper here than the SVD behind torch.linalg.matrix_norm(J, 2).
        norms = torch.linalg.eigvalsh(J.mT @ J)[:, -1].clamp_min(0).sqrt()
    return LSTMProbe(grad_h=grad_h, growth=grad_h[0] / grad_h[-1], saturation=gate_saturation(run.gates),
                     jacobian_norms=[float(v) for v in norms], loss=float(loss.detach()))
