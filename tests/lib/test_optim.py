"""gradlab.optim against torch.optim: same trajectories, same state dicts."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import optim

STEPS = 100


def _problem(dtype, seed=0, device="cpu"):
    """A few parameters of different shapes and a random non-convex loss."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    params = [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]
    targets = [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]
    return params, targets


def _loss(params, targets, t):
    # changes with t, so that the gradients are not a fixed direction (minibatch-like)
    return sum(((p - y) ** 2 * (1 + 0.5 * torch.sin(p + 0.3 * t))).sum() for p, y in zip(params, targets))


def _run(opt_cls, kwargs, dtype, steps=STEPS, device="cpu", skip_grad=False):
    params, targets = _problem(dtype, device=device)
    params = [p.clone().requires_grad_(True) for p in params]
    opt = opt_cls(params, **kwargs)
    sign = -1.0 if kwargs.get("maximize") else 1.0  # maximize the negated loss: stays bounded
    for t in range(steps):
        opt.zero_grad()
        (sign * _loss(params, targets, t)).backward()
        if skip_grad and t % 3 == 0:
            params[1].grad = None  # a parameter without gradient on some steps
        opt.step()
    return [p.detach() for p in params], opt


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-12)


def _assert_same(mine, ref, dtype):
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, **_tol(dtype))


CASES = {
    "SGD": [dict(lr=0.01), dict(lr=0.01, momentum=0.9), dict(lr=0.01, momentum=0.9, dampening=0.3),
            dict(lr=0.01, momentum=0.9, nesterov=True), dict(lr=0.01, momentum=0.5, weight_decay=0.1),
            dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True)],
    "Adagrad": [dict(), dict(lr=0.1, lr_decay=0.01), dict(lr=0.05, weight_decay=0.1),
                dict(lr=0.05, initial_accumulator_value=0.5, eps=1e-6), dict(lr=0.05, maximize=True)],
    "RMSprop": [dict(lr=0.01), dict(lr=0.01, centered=True), dict(lr=0.005, momentum=0.9),
                dict(lr=0.005, momentum=0.9, centered=True, weight_decay=0.1),
                dict(lr=0.01, alpha=0.9, eps=1e-4, maximize=True)],
    "Adam": [dict(lr=0.01), dict(lr=0.01, amsgrad=True), dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6),
             dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
             dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)],
    "AdamW": [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.3),
              dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.0, maximize=True)],
}
PARAMS = [(name, kw) for name, kws in CASES.items() for kw in kws]


@pytest.mark.parametrize("name,kwargs", PARAMS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PARAMS)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_matches_torch(name, kwargs, dtype, foreach):
    mine, _ = _run(getattr(optim, name), dict(kwargs, foreach=foreach), dtype, skip_grad=True)
    ref, _ = _run(getattr(torch.optim, name), dict(kwargs, foreach=False), dtype, skip_grad=True)
    _assert_same(mine, ref, dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_defaults_match_torch(name):
    p = [torch.zeros(2, requires_grad=True)]
    mine = getattr(optim, name)(p).defaults
    ref = getattr(torch.optim, name)(p).defaults
    for k, v in ref.items():
        assert mine[k] == v, (k, mine[k], v)


@pytest.mark.parametrize("name,kwargs", [(n, kws[-1]) for n, kws in CASES.items()])
def test_state_dict_round_trip_with_torch(name, kwargs):
    """Run 30 steps with gradlab, load its state into torch (and back), continue: same as 60 steps."""
    dtype = torch.float64
    params, targets = _problem(dtype)
    a = [p.clone().requires_grad_(True) for p in params]
    opt = getattr(optim, name)(a, **kwargs)
    sign = -1.0 if kwargs.get("maximize") else 1.0
    for t in range(30):
        opt.zero_grad()
        (sign * _loss(a, targets, t)).backward()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    saved = copy.deepcopy(sd)
    b = [p.detach().clone().requires_grad_(True) for p in a]
    ref_opt = getattr(torch.optim, name)(b, **kwargs)
    ref_opt.load_state_dict(sd)
    back = getattr(optim, name)([p.detach().clone().requires_grad_(True) for p in a], **kwargs)
    back.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    for t in range(30, 60):
        for o, ps in ((opt, a), (ref_opt, b)):
            o.zero_grad()
            (sign * _loss(ps, targets, t)).backward()
            o.step()
    _assert_same([p.detach() for p in a], [p.detach() for p in b], dtype)
    # gradlab -> torch -> gradlab restores the state saved at step 30
    for k, v in saved["state"][0].items():
        torch.testing.assert_close(back.state_dict()["state"][0][k], v)
    # and after 30 more steps, torch's state is gradlab's state
    for k, v in opt.state_dict()["state"][0].items():
        torch.testing.assert_close(ref_opt.state_dict()["state"][0][k], v, **_tol(dtype))


def test_param_groups_and_scheduler():
    torch.manual_seed(0)
    model_a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    model_b = copy.deepcopy(model_a)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    opts, scheds = [], []
    for cls, m in ((optim.Adam, model_a), (torch.optim.Adam, model_b)):
        o = cls([{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.03}], lr=0.01)
        opts.append(o)
        scheds.append(torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5))
    for _ in range(40):
        for o, s, m in zip(opts, scheds, (model_a, model_b)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
            s.step()
    assert opts[0].param_groups[1]["lr"] == pytest.approx(0.03 / 16)
    _assert_same(list(model_a.parameters()), list(model_b.parameters()), torch.float64)


def test_closure_returns_loss():
    p = torch.ones(3, requires_grad=True)
    opt = optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(3.0)
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.8))


def test_mixed_dtypes_in_one_group_foreach():
    ps32, ts32 = _problem(torch.float32)
    ps64, ts64 = _problem(torch.float64, seed=1)
    for cls in (optim.SGD, optim.Adam, optim.RMSprop, optim.Adagrad):
        mine = [p.clone().requires_grad_(True) for p in ps32 + ps64]
        ref = [p.clone().requires_grad_(True) for p in ps32 + ps64]
        kw = dict(lr=0.01, momentum=0.9) if cls in (optim.SGD, optim.RMSprop) else dict(lr=0.01)
        o1, o2 = cls(mine, foreach=True, **kw), getattr(torch.optim, cls.__name__)(ref, foreach=False, **kw)
        for t in range(10):
            for o, ps in ((o1, mine), (o2, ref)):
                o.zero_grad()
                (_loss(ps[:4], ts32, t) + _loss(ps[4:], ts64, t)).backward()
                o.step()
        for a, b in zip(mine, ref):
            torch.testing.assert_close(a, b, **_tol(a.dtype))


@pytest.mark.parametrize("cls,kwargs,match", [
    (optim.SGD, dict(lr=-1.0), "lr must be >= 0, got -1.0"),
    (optim.SGD, dict(momentum=-0.1), "momentum must be >= 0"),
    (optim.SGD, dict(lr=0.1, nesterov=True), "Nesterov momentum requires momentum > 0"),
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening = 0"),
    (optim.SGD, dict(fused=True), "fused=True is not supported"),
    (optim.Adagrad, dict(eps=-1e-3), "eps must be >= 0"),
    (optim.Adagrad, dict(lr_decay=-1), "lr_decay must be >= 0"),
    (optim.RMSprop, dict(alpha=-0.5), "alpha must be >= 0"),
    (optim.RMSprop, dict(capturable=True), "capturable=True is not supported"),
    (optim.Adam, dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),
    (optim.Adam, dict(betas=(0.9, -0.1)), r"betas\[1\] must be >= 0"),
    (optim.Adam, dict(betas=0.9), "betas must be a pair"),
    (optim.AdamW, dict(weight_decay=-0.01), "weight_decay must be >= 0"),
    (optim.Adam, dict(lr=float("nan")), "lr must be >= 0, got nan"),
])
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


def test_lr_type_error():
    with pytest.raises(TypeError, match="lr must be a number"):
        optim.SGD([torch.zeros(2, requires_grad=True)], lr="0.1")


def test_sparse_gradients_rejected():
    p = torch.zeros(4, 2, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2), check_invariants=True)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optim.Adam([p]).step()


def test_no_grad_no_state():
    p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = optim.Adam([p, q], lr=0.1)
    (p.sum()).backward()
    opt.step()
    assert q not in opt.state and torch.equal(q.detach(), torch.ones(2))


@settings(max_examples=25, deadline=None)
@given(lr=st.floats(1e-4, 1.0), scale=st.floats(1e-6, 1e6), b1=st.floats(0.0, 0.99),
       b2=st.floats(0.9, 0.9999), seed=st.integers(0, 2**16))
def test_adam_per_coordinate_step_bound(lr, scale, b1, b2, seed):
    """Exact per-coordinate bound (Cauchy-Schwarz on the moment sums), for any gradients:
    |step_t| <= lr (1-b1)/sqrt(1-b2) * sqrt(sum_{k<t} (b1^2/b2)^k) * sqrt(1-b2^t)/(1-b1^t),
    which is exactly lr at t = 1 (Kingma & Ba's Sec. 2.1 bounds are its approximate form).
    eps only shrinks the step."""
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt = optim.Adam([p], lr=lr, betas=(b1, b2))
    gamma = b1**2 / b2
    for t in range(1, 16):
        before = p.detach().clone()
        p.grad = scale * torch.randn(20, generator=g, dtype=torch.float64) ** 3
        opt.step()
        s_t = sum(gamma**k for k in range(t))
        bound = lr * (1 - b1) / (1 - b2) ** 0.5 * s_t**0.5 * (1 - b2**t) ** 0.5 / (1 - b1**t)
        assert (p.detach() - before).abs().max().item() <= bound * (1 + 1e-9)
        if t == 1:
            assert bound == pytest.approx(lr)


@settings(max_examples=25, deadline=None)
@given(c=st.floats(1e-4, 1e4), seed=st.integers(0, 2**16))
def test_adam_scale_invariance(c, seed):
    """Multiplying every gradient by c > 0 leaves Adam's steps unchanged (eps = 0)."""
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(10)]
    out = []
    for s in (1.0, c):
        p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        opt = optim.Adam([p], lr=0.1, eps=0.0)
        for gr in grads:
            p.grad = s * gr
            opt.step()
        out.append(p.detach())
    torch.testing.assert_close(out[0], out[1], rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(lam=st.floats(0.1, 10.0), ratio=st.floats(0.5, 1.5))
def test_sgd_quadratic_stability_limit(lam, ratio):
    """On f = lam x^2 / 2, gradient descent contracts iff lr < 2 / lam."""
    lr = ratio * 2 / lam
    p = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = optim.SGD([p], lr=lr)
    for _ in range(30):
        p.grad = lam * p.detach().clone()
        opt.step()
    factor = abs(1 - lr * lam)
    want = torch.tensor([factor**30], dtype=torch.float64)
    torch.testing.assert_close(p.detach().abs(), want, rtol=1e-9, atol=1e-300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,kwargs", [(n, kws[-1]) for n, kws in CASES.items()])
@pytest.mark.parametrize("foreach", [False, True])
def test_cuda_matches_torch(name, kwargs, foreach):
    for dtype in (torch.float32, torch.float64):
        mine, _ = _run(getattr(optim, name), dict(kwargs, foreach=foreach), dtype, device="cuda", steps=50)
        ref, _ = _run(getattr(torch.optim, name), dict(kwargs, foreach=False), dtype, device="cuda", steps=50)
        _assert_same(mine, ref, dtype)


def test_cases_cover_every_option():
    """Every boolean option of each optimizer is exercised as True somewhere in CASES."""
    flags = {"SGD": ["nesterov", "maximize"], "Adagrad": ["maximize"],
             "RMSprop": ["centered", "maximize"], "Adam": ["amsgrad", "maximize", "decoupled_weight_decay"],
             "AdamW": ["amsgrad", "maximize"]}
    for name, fl in flags.items():
        for f in fl:
            assert any(kw.get(f) for kw in CASES[name]), (name, f)
    assert list(itertools.chain(CASES)) == ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]


def test_check_adam_step_accepts_adam_and_explains_mistakes():
    from gradlab.checks import check_adam_step

    def right(p, g, m, v, t, lr, b1, b2, eps):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        return p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps), m, v

    def no_bias_correction(p, g, m, v, t, lr, b1, b2, eps):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        return p - lr * m / (v.sqrt() + eps), m, v

    def not_written(*args):
        raise NotImplementedError

    assert check_adam_step(right).passed
    result = check_adam_step(no_bias_correction)
    assert not result.passed and "bias correction" in result.message
    assert "not written yet" in check_adam_step(not_written).message
