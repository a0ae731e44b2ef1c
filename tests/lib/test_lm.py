"""gradlab.lm: the case study's models, data windows, warm-up and training loop."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

import gradlab
from gradlab import lm
from gradlab.data import encode_chars, load_text

TEXT = load_text()


@pytest.fixture(scope="module")
def splits():
    return lm.char_splits(TEXT)


def small(**kw) -> lm.TrainConfig:
    base = dict(hidden_size=32, embedding_dim=8, steps=6, batch_size=4, seq_len=16, eval_every=3, lr=0.01)
    base.update(kw)
    return lm.TrainConfig(**base)


# ----------------------------------------------------------------------------- data


def test_char_splits_cover_the_text_in_order(splits):
    train, val, vocab = splits
    codes, vocab_ref = encode_chars(TEXT)
    assert vocab == vocab_ref
    assert torch.equal(torch.cat([train, val]), codes)
    assert abs(len(val) / len(codes) - 0.1) < 1e-3


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_char_splits_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction"):
        lm.char_splits(TEXT, bad)


def test_random_windows_are_shifted_substrings(splits):
    train, _, _ = splits
    g = torch.Generator().manual_seed(3)
    x, y = lm.random_windows(train, 8, 20, g)
    assert x.shape == y.shape == (8, 20)
    assert torch.equal(x[:, 1:], y[:, :-1])
    text = train.tolist()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        starts = [i for i in range(len(text) - 20) if text[i:i + 20] == row_x]
        assert any(text[i + 1:i + 21] == row_y for i in starts)


def test_random_windows_too_long_says_what_to_do():
    with pytest.raises(ValueError, match="shorter seq_len"):
        lm.random_windows(torch.arange(10), 2, 10)


# ----------------------------------------------------------------------------- warm-up


@pytest.mark.parametrize("w", [2, 5, 17])
def test_warmup_factor_matches_torch_linear_lr(w):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
    for step in range(3 * w):
        assert lm.warmup_factor(step, w) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_warmup_factor_zero_and_negative():
    assert lm.warmup_factor(0, 0) == 1.0
    with pytest.raises(ValueError, match="warmup_steps must be an int >= 0"):
        lm.warmup_factor(0, -1)


# ----------------------------------------------------------------------------- models


def test_char_rnn_shapes_and_state():
    model = lm.CharRNN(20, hidden_size=16, embedding_dim=4, num_layers=2, cell="gru")
    x = torch.randint(0, 20, (3, 7))
    logits, state = model(x)
    assert logits.shape == (3, 7, 20)
    # Feeding the sequence in two halves with the carried state gives the same logits.
    a, s = model(x[:, :4])
    b, _ = model(x[:, 4:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), logits)


@pytest.mark.parametrize("kw, match", [
    (dict(cell="rnn"), "cell must be"),
    (dict(init="xavier"), "init must be"),
    (dict(hidden_size=0), "hidden_size must be an int >= 1"),
])
def test_char_rnn_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        lm.CharRNN(10, **kw)


def test_forget_bias_init_sums_to_one():
    H = 12
    model = lm.CharRNN(10, hidden_size=H, init="forget_bias")
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    torch.testing.assert_close(b[H:2 * H], torch.ones(H))
    default = lm.CharRNN(10, hidden_size=H)
    assert not torch.allclose((default.rnn.bias_ih_l0 + default.rnn.bias_hh_l0)[H:2 * H], torch.ones(H))
    with pytest.raises(ValueError, match="no forget gate"):
        lm.CharRNN(10, hidden_size=H, cell="gru", init="forget_bias")


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3)])
def test_orthogonal_init_makes_each_gate_block_orthogonal(cell, gates):
    H = 16
    model = lm.CharRNN(10, hidden_size=H, cell=cell, init="orthogonal")
    W = model.rnn.weight_hh_l0.detach()
    for k in range(gates):
        block = W[k * H:(k + 1) * H]
        torch.testing.assert_close(block.T @ block, torch.eye(H), atol=1e-5, rtol=0)
        s = torch.linalg.svdvals(block)
        torch.testing.assert_close(s, torch.ones(H), atol=1e-5, rtol=0)


def test_transformer_is_causal_and_checks_length():
    torch.manual_seed(0)
    model = lm.CharTransformer(15, d_model=16, nhead=2, num_layers=2, max_len=12).eval()
    x = torch.randint(0, 15, (2, 10))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 15
    a, _ = model(x)
    b, _ = model(x2)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    with pytest.raises(ValueError, match="larger max_len"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        lm.CharTransformer(15, d_model=10, nhead=3)


def test_param_groups():
    model = lm.CharRNN(10, hidden_size=4)
    groups = {n: lm.param_group_of(n) for n, _ in model.named_parameters()}
    assert groups == {"embed.weight": "embedding", "rnn.weight_ih_l0": "input", "rnn.weight_hh_l0": "recurrent",
                      "rnn.bias_ih_l0": "bias", "rnn.bias_hh_l0": "bias", "head.weight": "head",
                      "head.bias": "head"}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("kw, match", [
    (dict(model="mlp"), "model must be"),
    (dict(optimizer="sgd"), "optimizer must be"),
    (dict(clip=-1.0), "clip must be > 0, got -1.0.*or None"),
    (dict(clip=0.0), "clip must be > 0, got 0.0.*or None"),
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(warmup_steps=-5), "warmup_steps must be an int >= 0"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        lm.TrainConfig(**kw)


# ----------------------------------------------------------------------------- training


def test_training_is_deterministic_and_logs_consistently(splits):
    train, val, vocab = splits
    cfg = small(clip=0.5, warmup_steps=3)
    _, r1 = lm.train_char_lm(cfg, train, val, len(vocab))
    _, r2 = lm.train_char_lm(cfg, train, val, len(vocab))
    assert r1.loss == r2.loss and r1.grad_norm == r2.grad_norm
    assert len(r1.loss) == len(r1.grad_norm) == len(r1.sigma_hh) == len(r1.adam_step) == cfg.steps
    assert r1.val_steps == [3, 6] and len(r1.val_loss) == 2
    for i in range(cfg.steps):
        parts = sum(r1.groups[g][i] ** 2 for g in r1.groups)
        assert math.sqrt(parts) == pytest.approx(r1.grad_norm[i], rel=1e-9)
    assert r1.lr == pytest.approx([cfg.lr * lm.warmup_factor(s, 3) for s in range(cfg.steps)])
    assert r1.loss[0] == pytest.approx(math.log(len(vocab)), rel=0.15)


def test_training_matches_a_loop_with_torch_optim(splits):
    """The same run written with torch.optim.AdamW, torch's clip_grad_norm_ and
    LambdaLR ends at the same parameters."""
    train, val, vocab = splits
    cfg = small(optimizer="adamw", weight_decay=0.1, clip=0.3, warmup_steps=4, steps=8, lr=0.03)
    model, rec = lm.train_char_lm(cfg, train, val, len(vocab))

    ref = lm.build_model(cfg, len(vocab))
    opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lm.warmup_factor(s, cfg.warmup_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    norms, steps = [], []
    W = ref.rnn.weight_hh_l0
    for t in range(1, cfg.steps + 1):
        x, y = lm.random_windows(train, cfg.batch_size, cfg.seq_len, gen)
        logits, _ = ref(x)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.clip)))
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        # Adam's effective step on W_hh: lr / (sqrt(v_hat) + eps), from torch's own state
        v_hat = opt.state[W]["exp_avg_sq"] / (1 - 0.999**t)
        steps.append(float((lr / (v_hat.sqrt() + 1e-8)).median()))
    assert rec.grad_norm == pytest.approx(norms, rel=1e-4)
    assert rec.adam_step == pytest.approx(steps, rel=1e-3)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def test_spectral_and_adam_logs_match_direct_computation(splits):
    train, val, vocab = splits
    cfg = small(steps=30, lr=0.02)
    model, rec = lm.train_char_lm(cfg, train, val, len(vocab))
    W = model.rnn.weight_hh_l0.detach().double()
    assert rec.sigma_hh[-1] == pytest.approx(float(torch.linalg.matrix_norm(W, ord=2)), rel=1e-2)
    W0 = lm.build_model(cfg, len(vocab)).rnn.weight_hh_l0.detach().double()
    assert rec.sigma_hh_init == pytest.approx(float(torch.linalg.matrix_norm(W0, ord=2)), rel=1e-3)
    # Adam's first step moves every entry with a non-zero gradient by lr (eps aside):
    # ||delta W|| = lr * sqrt(#entries) (a little less where |g| ~ eps), and the median effective step is lr / |g|.
    first = rec.rel_update[0] * float(W0.norm())
    assert first <= cfg.lr * math.sqrt(W0.numel()) * (1 + 1e-6)
    assert first == pytest.approx(cfg.lr * math.sqrt(W0.numel()), rel=1e-2)


def test_device_auto_is_resolved(splits):
    """device="auto" (what every chapter passes) is gradlab.resolve_device's: the GPU if there is one."""
    train, val, vocab = splits
    cfg = small(steps=2, eval_every=2)
    model, rec = lm.train_char_lm(cfg, train, val, len(vocab), device="auto")
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(rec.loss) == 2
    _, ref = lm.train_char_lm(cfg, train, val, len(vocab), device=gradlab.resolve_device("auto"))
    assert rec.loss == ref.loss


def test_logged_norms_do_not_overflow(splits):
    """The loop logs float64 norms: gradients that overflow a float32 norm are logged finite and
    the run stops only where the gradients themselves are not finite."""
    train, val, vocab = splits
    cfg = small(steps=1)
    model = lm.build_model(cfg, len(vocab))
    # scale the loss through the read-out: gradients of order 1e19..1e20, squares beyond float32
    model.head.register_full_backward_hook(lambda m, gi, go: (gi[0] * 1e22,))
    _, rec = lm.train_char_lm(cfg, train, val, len(vocab), model=model)
    assert rec.nonfinite_step is None and math.isfinite(rec.grad_norm[0]) and rec.grad_norm[0] > 1e19


def test_nonfinite_loss_stops_the_run(splits):
    train, val, vocab = splits
    cfg = small()
    model = lm.build_model(cfg, len(vocab))
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    _, rec = lm.train_char_lm(cfg, train, val, len(vocab), model=model)
    assert rec.nonfinite_step == 0
    assert len(rec.loss) == 1 and rec.lr == []


def test_transformer_trains_and_logs_attention_spectrum(splits):
    train, val, vocab = splits
    cfg = small(model="transformer", hidden_size=16, num_layers=1, steps=20, lr=3e-3)
    model, rec = lm.train_char_lm(cfg, train, val, len(vocab))
    assert len(rec.sigma_hh) == 20 and "other" in rec.groups
    assert statistics.mean(rec.loss[-5:]) < rec.loss[0]


def test_evaluate_matches_cross_entropy_by_hand(splits):
    _, val, vocab = splits
    torch.manual_seed(1)
    model = lm.CharRNN(len(vocab), hidden_size=8, embedding_dim=4)
    T = 25
    n = (len(val) - 1) // T
    total = 0.0
    for i in range(n):
        x = val[i * T:(i + 1) * T][None]
        y = val[i * T + 1:(i + 1) * T + 1]
        logits, _ = model(x)
        total += float(F.cross_entropy(logits[0], y, reduction="sum").detach())
    assert lm.evaluate(model, val, T, batch_size=7) == pytest.approx(total / (n * T), rel=1e-5)
    with pytest.raises(ValueError, match="more than seq_len"):
        lm.evaluate(model, val[:10], 20)


def test_sample_is_reproducible_and_validates(splits):
    _, _, vocab = splits
    model = lm.CharRNN(len(vocab), hidden_size=8, embedding_dim=4)
    a = lm.sample(model, vocab, "The ", 30, generator=torch.Generator().manual_seed(0))
    b = lm.sample(model, vocab, "The ", 30, generator=torch.Generator().manual_seed(0))
    assert a == b and a.startswith("The ") and len(a) == 34 and set(a) <= set(vocab)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.sample(model, vocab, "\u2603", 5)
    with pytest.raises(ValueError, match="temperature"):
        lm.sample(model, vocab, "The", 5, temperature=0)
    tf = lm.CharTransformer(len(vocab), d_model=16, nhead=2, num_layers=1, max_len=16)
    assert len(lm.sample(tf, vocab, "The", 20, generator=torch.Generator().manual_seed(0))) == 23


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_cpu_loosely(splits):
    train, val, vocab = splits
    cfg = small(steps=5)
    _, cpu = lm.train_char_lm(cfg, train, val, len(vocab), device="cpu")
    _, gpu = lm.train_char_lm(cfg, train, val, len(vocab), device="cuda")
    assert len(gpu.loss) == 5 and all(math.isfinite(v) for v in gpu.loss)
    assert gpu.loss[0] == pytest.approx(math.log(len(vocab)), rel=0.15)
    assert cpu.loss[0] == pytest.approx(math.log(len(vocab)), rel=0.15)


# ----------------------------------------------------------------------------- stages and summary


def test_fix_stages_are_cumulative():
    base = lm.TrainConfig(lr=0.1)
    st = lm.fix_stages(base, clip=2.0, warmup_steps=7, weight_decay=0.05)
    assert list(st) == ["bare recipe", "+ clipping", "+ warm-up", "+ AdamW", "+ forget bias 1"]
    assert st["bare recipe"] is base
    last = st["+ forget bias 1"]
    assert (last.clip, last.warmup_steps, last.optimizer, last.weight_decay, last.init, last.lr) == \
        (2.0, 7, "adamw", 0.05, "forget_bias", 0.1)
    assert st["+ clipping"].warmup_steps == 0 and st["+ warm-up"].optimizer == "adam"
    assert "+ forget bias 1" not in lm.fix_stages(lm.TrainConfig(model="transformer"))


def _record(grad_norm, loss, val, sigma, nonfinite=None):
    rec = lm.TrainRecord(config={})
    rec.grad_norm, rec.loss, rec.val_loss, rec.sigma_hh = grad_norm, loss, val, sigma
    rec.nonfinite_step = nonfinite
    return rec


def test_summarize_counts_spikes_and_takes_medians():
    recs = [_record([1.0, 150.0, 1.0], [3.0, 2.0, 1.0], [2.0], [5.0]),
            _record([1.0, 50.0, 1.0], [3.0, 2.0, 2.0], [3.0], [7.0]),
            _record([2.0, float("nan")], [3.0, float("nan")], [], [6.0], nonfinite=1)]
    row = lm.summarize(recs)
    assert row["spiked runs"] == 2 and row["runs"] == 3
    assert row["peak |g|"] == 150.0
    assert row["train loss"] == pytest.approx(statistics.median([2.0, 7 / 3, float("inf")]))
    assert row["val loss"] == 3.0
    assert row["sigma_max W_hh"] == 6.0
    assert lm.summarize(recs[:2])["peak |g|"] == 100.0  # even count: mean of the middle two
    with pytest.raises(ValueError, match="at least one"):
        lm.summarize([])


# ----------------------------------------------------------------------------- inside an LSTM


def _lstm(H=12, seed=0, scale=1.0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = lm.CharRNN(20, hidden_size=H, embedding_dim=5).to(dtype)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(scale)  # scale > 1 pushes the gates towards saturation
    x = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(seed + 1))
    return model, x, y


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_lstm_unroll_matches_nn_lstm(dtype, tol):
    model, x, _ = _lstm(dtype=dtype, scale=3.0)
    run = lm.lstm_unroll(model, x)
    ref, (h_n, c_n) = model.rnn(model.embed(x))
    torch.testing.assert_close(run.output, ref, atol=tol, rtol=0)
    torch.testing.assert_close(run.c[:, -1], c_n[0], atol=tol, rtol=0)
    assert len(run.h) == 9 and run.gates.shape == (3, 9, 4, 12)
    i, f, g, o = run.gates[:, -1].unbind(1)
    torch.testing.assert_close(run.h[-1], o * torch.tanh(run.c[:, -1]), atol=tol, rtol=0)
    assert bool(((run.gates[:, :, [0, 1, 3]] > 0) & (run.gates[:, :, [0, 1, 3]] < 1)).all())


def test_lstm_unroll_keeps_the_gradient_of_every_hidden_state():
    model, x, y = _lstm()
    run = lm.lstm_unroll(model, x)
    F.cross_entropy(model.head(run.output).reshape(-1, 20), y.reshape(-1)).backward()
    assert all(h.grad is not None and h.grad.shape == (3, 12) for h in run.h)
    # the last state only feeds its own read-out: its gradient is W_head^T (softmax - onehot) / N
    logits = model.head(run.output[:, -1]).detach()
    delta = (torch.softmax(logits, -1) - F.one_hot(y[:, -1], 20)) / y.numel()
    torch.testing.assert_close(run.h[-1].grad, delta @ model.head.weight.detach())


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_lstm_step_jacobian_matches_autograd(scale):
    model, x, _ = _lstm(scale=scale)
    rnn, H = model.rnn, 12
    run = lm.lstm_unroll(model, x)
    emb = model.embed(x).detach()

    def cell(state, e):
        h, c = state[:H], state[H:]
        z = rnn.weight_ih_l0 @ e + rnn.bias_ih_l0 + rnn.weight_hh_l0 @ h + rnn.bias_hh_l0
        zi, zf, zg, zo = z.chunk(4)
        c2 = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
        return torch.cat([torch.sigmoid(zo) * torch.tanh(c2), c2])

    for b, t in [(0, 1), (2, 5), (1, 8)]:
        state = torch.cat([run.h[t - 1][b].detach(), run.c[b, t - 1]])
        ref = torch.func.jacrev(cell)(state, emb[b, t]).detach()
        J = lm.lstm_step_jacobian(rnn.weight_hh_l0.detach(), run.gates[b, t], run.c[b, t - 1], run.c[b, t])
        torch.testing.assert_close(J, ref, atol=1e-12, rtol=0)
    # batched over leading dimensions
    Jb = lm.lstm_step_jacobian(rnn.weight_hh_l0.detach(), run.gates[:, 1:], run.c[:, :-1], run.c[:, 1:])
    assert Jb.shape == (3, 8, 24, 24)
    torch.testing.assert_close(Jb[2, 4], lm.lstm_step_jacobian(rnn.weight_hh_l0.detach(), run.gates[2, 5],
                                                                 run.c[2, 4], run.c[2, 5]))


def test_lstm_step_jacobian_rejects_bad_shapes():
    W = torch.zeros(40, 10)
    with pytest.raises(ValueError, match="weight_hh must be"):
        lm.lstm_step_jacobian(torch.zeros(30, 10), torch.zeros(4, 10), torch.zeros(10), torch.zeros(10))
    with pytest.raises(ValueError, match="gates must be"):
        lm.lstm_step_jacobian(W, torch.zeros(3, 10), torch.zeros(10), torch.zeros(10))
    with pytest.raises(ValueError, match="gates must be"):
        lm.lstm_step_jacobian(W, torch.zeros(4, 10), torch.zeros(10), torch.zeros(2, 10))


def test_gate_saturation_counts_derivatives_below_the_threshold():
    z = torch.tensor([0.0, 3.0, 4.0, -5.0])  # sigmoid derivative x4: 1, 0.18, 0.07, 0.03
    gates = torch.stack([torch.sigmoid(z), torch.sigmoid(z), torch.tanh(z / 2), torch.sigmoid(z)])
    # tanh(z/2) at 0, 1.5, 2, -2.5: 1 - tanh^2 = 1, 0.18, 0.07, 0.03 as well
    assert lm.gate_saturation(gates) == pytest.approx(0.5)
    assert lm.gate_saturation(gates, threshold=0.05) == pytest.approx(0.25)
    assert lm.gate_saturation(gates[None, None].expand(2, 3, 4, 4)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold"):
        lm.gate_saturation(gates, threshold=1.5)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, H\]"):
        lm.gate_saturation(torch.zeros(3, 5))


def test_probe_lstm_measures_the_backward_pass():
    model, x, y = _lstm(scale=2.0)
    run = lm.lstm_unroll(model, x)
    loss = F.cross_entropy(model.head(run.output).reshape(-1, 20), y.reshape(-1))
    loss.backward()
    expected = [float(h.grad.norm()) for h in run.h]
    for p in model.parameters():
        p.grad = None
    probe = lm.probe_lstm(model, x, y, positions=[1, 4, 8], sequences=2)
    assert probe.grad_h == pytest.approx(expected, rel=1e-10)
    assert probe.growth == pytest.approx(expected[0] / expected[-1], rel=1e-10)
    assert probe.loss == pytest.approx(loss.item(), rel=1e-12)
    assert probe.saturation == pytest.approx(lm.gate_saturation(run.gates))
    J = lm.lstm_step_jacobian(model.rnn.weight_hh_l0.detach(), run.gates[:2, [1, 4, 8]],
                              run.c[:2, [0, 3, 7]], run.c[:2, [1, 4, 8]])
    ref = torch.linalg.matrix_norm(J, ord=2).flatten()
    assert probe.jacobian_norms == pytest.approx(ref.tolist(), rel=1e-8)
    assert all(p.grad is None for p in model.parameters())  # the parameters' gradients are left alone
    assert len(lm.probe_lstm(model, x, y).jacobian_norms) == 2  # default positions: 1 (every 16th)


def test_probe_lstm_sees_an_exploding_product():
    """A large recurrent weight with unsaturated gates explodes the gradient through time;
    the same model with the recurrent weight switched off does not."""
    torch.manual_seed(0)
    model = lm.CharRNN(20, hidden_size=32, embedding_dim=4).double()
    x = torch.randint(0, 20, (4, 40), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 20, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.rnn.bias_ih_l0[32:64] = 6.0  # forget gate open: the cell keeps its memory
        W = torch.randn(128, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        model.rnn.weight_hh_l0.copy_(3.0 * W / math.sqrt(32))
    big = lm.probe_lstm(model, x, y)
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
    off = lm.probe_lstm(model, x, y)
    assert big.growth > 100 * off.growth
    # without W_hh only the cell path is left: per unit [[0, a f], [0, f]] with a, f < 1
    assert max(off.jacobian_norms) <= math.sqrt(2)


@pytest.mark.parametrize("kw, match", [
    (dict(positions=[0, 3]), "positions must be"),
    (dict(positions=[9]), "positions must be"),
    (dict(sequences=4), "sequences must be"),
])
def test_probe_lstm_rejects_bad_arguments(kw, match):
    model, x, y = _lstm()
    with pytest.raises(ValueError, match=match):
        lm.probe_lstm(model, x, y, **kw)
    with pytest.raises(ValueError, match="one unidirectional LSTM layer"):
        lm.probe_lstm(lm.CharRNN(20, hidden_size=4, cell="gru"), x, y)
