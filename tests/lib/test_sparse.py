"""gradlab.sparse against torch references: SparseAdam parity and the lazy optimizers."""

from __future__ import annotations

import pytest
import torch

from gradlab import sparse

DTYPES = [torch.float32, torch.float64]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _embedding_grads(n_rows, dim, steps, touched, dtype, seed=0, device="cpu"):
    """A list of sparse COO gradients like nn.Embedding(sparse=True) makes (with duplicates)."""
    g = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(steps):
        idx = torch.randint(0, n_rows, (touched,), generator=g)
        vals = torch.randn(touched, dim, generator=g, dtype=dtype)
        grads.append(torch.sparse_coo_tensor(idx[None], vals, (n_rows, dim), check_invariants=True).to(device))
    return grads


def _run(opt_cls, grads, init, **kw):
    p = torch.nn.Parameter(init.clone())
    opt = opt_cls([p], **kw)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    return p.detach(), opt


# ----------------------------------------------------------------------------- SparseAdam


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, {"lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-6}, {"maximize": True}])
def test_sparse_adam_matches_torch_over_many_steps(dtype, kw):
    grads = _embedding_grads(50, 4, 60, 12, dtype)
    init = torch.randn(50, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours, o1 = _run(sparse.SparseAdam, grads, init, **kw)
    ref, o2 = _run(torch.optim.SparseAdam, grads, init, **kw)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    s1, s2 = o1.state[next(iter(o1.state))], o2.state[next(iter(o2.state))]
    assert s1["step"] == s2["step"] == 60
    torch.testing.assert_close(s1["exp_avg"], s2["exp_avg"], rtol=tol, atol=tol)
    torch.testing.assert_close(s1["exp_avg_sq"], s2["exp_avg_sq"], rtol=tol, atol=tol)


def test_sparse_adam_multi_dim_sparse_and_untouched_rows():
    g = torch.Generator().manual_seed(3)
    init = torch.randn(6, 5, 3, generator=g, dtype=torch.float64)
    grads = []
    for _ in range(10):
        idx = torch.stack([torch.randint(0, 6, (7,), generator=g), torch.randint(0, 5, (7,), generator=g)])
        grads.append(torch.sparse_coo_tensor(idx, torch.randn(7, 3, generator=g, dtype=torch.float64),
                                             (6, 5, 3), check_invariants=True))
    ours, _ = _run(sparse.SparseAdam, grads, init, lr=0.1)
    ref, _ = _run(torch.optim.SparseAdam, grads, init, lr=0.1)
    torch.testing.assert_close(ours, ref)
    # a row no gradient ever touches keeps its value exactly
    one = [torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 5, 3, dtype=torch.float64),
                                   (6, 5, 3), check_invariants=True)]
    after, _ = _run(sparse.SparseAdam, one, init, lr=0.1)
    assert torch.equal(after[1], init[1]) and not torch.equal(after[0], init[0])


def _non_contiguous_cases(dtype, steps, seed):
    """(initial non-contiguous parameter, sparse gradients) for the layouts that have no
    2-D row view: a transposed matrix with gradients over both dimensions (what
    ``grad.to_sparse()`` gives), a permuted 3-D tensor with one and with two sparse dims."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for shape, perm, k in (((4, 50), (1, 0), 2), ((3, 6, 5), (1, 2, 0), 1), ((3, 6, 5), (1, 2, 0), 2)):
        init = torch.randn(*shape, generator=g, dtype=dtype).permute(*perm)
        grads = []
        for _ in range(steps):
            idx = torch.stack([torch.randint(0, n, (9,), generator=g) for n in init.shape[:k]])
            vals = torch.randn(9, *init.shape[k:], generator=g, dtype=dtype)
            grads.append(torch.sparse_coo_tensor(idx, vals, init.shape, check_invariants=True))
        cases.append((init, grads))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_adam_non_contiguous_parameter_matches_torch(dtype):
    """E.g. Parameter(x.t()) with a gradient made by to_sparse(): torch's SparseAdam
    accepts any strides, so must the drop-in."""
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for init, grads in _non_contiguous_cases(dtype, 12, seed=1):
        p1, p2 = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())  # clone keeps strides
        assert not p1.is_contiguous()
        o1, o2 = sparse.SparseAdam([p1], lr=0.05), torch.optim.SparseAdam([p2], lr=0.05)
        for grad in grads:
            p1.grad, p2.grad = grad.clone(), grad.clone()
            o1.step()
            o2.step()
        torch.testing.assert_close(p1.detach(), p2.detach(), rtol=tol, atol=tol)
        assert p1.stride() == p2.stride()
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(o1.state[p1][key], o2.state[p2][key], rtol=tol, atol=tol)
            assert o1.state[p1][key].stride() == o2.state[p2][key].stride()


@pytest.mark.parametrize("cls, kw", [(sparse.LazyAdam, {}), (sparse.LazyAdam, {"catch_up": True}),
                                     (sparse.LazySGD, {"momentum": 0.9, "weight_decay": 0.01})])
@pytest.mark.parametrize("dense", [False, True])
def test_lazy_optimizers_non_contiguous_equal_contiguous(cls, kw, dense):
    for init, grads in _non_contiguous_cases(torch.float64, 10, seed=3):
        if dense:
            grads = [x.to_dense() for x in grads]
        p_nc, p_c = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.contiguous())
        assert not p_nc.is_contiguous() and p_c.is_contiguous()
        o_nc, o_c = cls([p_nc], lr=0.05, **kw), cls([p_c], lr=0.05, **kw)
        for grad in grads:
            p_nc.grad, p_c.grad = grad.clone(), grad.clone()
            o_nc.step()
            o_c.step()
        torch.testing.assert_close(p_nc.detach(), p_c.detach(), rtol=1e-13, atol=1e-13)
        assert not torch.equal(p_nc.detach(), init)


def _two_group_params(dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    a = torch.randn(30, 4, generator=g, dtype=dtype)
    b = torch.randn(12, 3, generator=g, dtype=dtype)
    return a, b


def _grads_for(shapes, steps, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = []
        for rows, dim in shapes:
            idx = torch.randint(0, rows, (5,), generator=g)
            step.append(torch.sparse_coo_tensor(idx[None], torch.randn(5, dim, generator=g, dtype=torch.float64),
                                                (rows, dim), check_invariants=True))
        out.append(step)
    return out


def _groups(a, b):
    return [{"params": [a]}, {"params": [b], "lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6}]


def test_sparse_adam_param_groups_and_scheduler_match_torch():
    a0, b0 = _two_group_params()
    grads = _grads_for([(30, 4), (12, 3)], 40, seed=12)
    results = []
    for cls in (sparse.SparseAdam, torch.optim.SparseAdam):
        a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
        opt = cls(_groups(a, b), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        lrs = []
        for ga, gb in grads:
            a.grad, b.grad = ga.clone(), gb.clone()
            opt.step()
            sched.step()
            lrs.append([grp["lr"] for grp in opt.param_groups])
        results.append((a.detach(), b.detach(), lrs))
    (a1, b1, l1), (a2, b2, l2) = results
    assert l1 == l2 and l1[-1][0] < 0.01  # the scheduler did act
    torch.testing.assert_close(a1, a2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(b1, b2, rtol=1e-13, atol=1e-13)


def test_sparse_adam_state_dict_round_trip_and_torch_compatibility():
    a0, b0 = _two_group_params()
    grads = _grads_for([(30, 4), (12, 3)], 30, seed=13)

    def run(cls, steps, a, b, state=None):
        opt = cls(_groups(a, b), lr=0.01)
        if state is not None:
            opt.load_state_dict(state)
        for ga, gb in steps:
            a.grad, b.grad = ga.clone(), gb.clone()
            opt.step()
        return opt

    # the reference: torch's SparseAdam for all 30 steps
    ra, rb = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    run(torch.optim.SparseAdam, grads, ra, rb)
    # ours for 15 steps; its state_dict has torch's layout ...
    a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    ours = run(sparse.SparseAdam, grads[:15], a, b)
    ta, tb = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    theirs = run(torch.optim.SparseAdam, grads[:15], ta, tb)
    sd1, sd2 = ours.state_dict(), theirs.state_dict()
    assert sd1["param_groups"] == sd2["param_groups"]
    assert sd1["state"].keys() == sd2["state"].keys()
    for i in sd1["state"]:
        assert sd1["state"][i].keys() == sd2["state"][i].keys() and sd1["state"][i]["step"] == 15
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sd1["state"][i][key], sd2["state"][i][key], rtol=1e-13, atol=1e-13)
    # ... so a fresh gradlab optimizer resumes from either and ends where torch ends
    for sd in (sd1, sd2):
        ca, cb = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
        resumed = run(sparse.SparseAdam, grads[15:], ca, cb, state=sd)
        assert resumed.state[ca]["step"] == 30
        torch.testing.assert_close(ca.detach(), ra.detach(), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(cb.detach(), rb.detach(), rtol=1e-13, atol=1e-13)


def test_sparse_adam_add_param_group_matches_torch():
    a0, b0 = _two_group_params()
    grads = _grads_for([(30, 4), (12, 3)], 20, seed=14)
    out = []
    for cls in (sparse.SparseAdam, torch.optim.SparseAdam):
        a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
        opt = cls([a], lr=0.02)
        for s, (ga, gb) in enumerate(grads):
            if s == 10:
                opt.add_param_group({"params": [b], "betas": (0.5, 0.9)})
            a.grad, b.grad = ga.clone(), gb.clone()
            opt.step()
        out.append((a.detach(), b.detach(), opt.param_groups[1]["lr"], opt.param_groups[1]["eps"]))
    assert out[0][2:] == out[1][2:] == (0.02, 1e-8)  # defaults filled in the same way
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-13, atol=1e-13)


def test_sparse_adam_bad_inputs():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="learning rate"):
        sparse.SparseAdam([p], lr=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        sparse.SparseAdam([p], eps=0.0)
    with pytest.raises(ValueError, match="index 1"):
        sparse.SparseAdam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="dense parameter"):
        sparse.SparseAdam([torch.zeros(3, 2).to_sparse()])
    opt = sparse.SparseAdam([p])
    p.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()


def test_sparse_adam_with_embedding_module():
    torch.manual_seed(0)
    emb1 = torch.nn.Embedding(30, 4, sparse=True)
    emb2 = torch.nn.Embedding(30, 4, sparse=True)
    emb2.load_state_dict(emb1.state_dict())
    o1, o2 = sparse.SparseAdam(emb1.parameters(), lr=0.01), torch.optim.SparseAdam(emb2.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(0, 30, (8, 3), generator=g)
        for emb, opt in ((emb1, o1), (emb2, o2)):
            opt.zero_grad()
            emb(idx).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(emb1.weight, emb2.weight)


# ----------------------------------------------------------------------------- LazyAdam / LazySGD


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("catch_up", [False, True])
def test_lazy_adam_equals_adam_when_every_row_is_touched(dtype, catch_up):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(8, 3, generator=g, dtype=dtype) for _ in range(30)]
    init = torch.randn(8, 3, generator=g, dtype=dtype)
    ours, _ = _run(sparse.LazyAdam, grads, init, lr=0.01, catch_up=catch_up)
    ref, _ = _run(torch.optim.Adam, grads, init, lr=0.01)
    torch.testing.assert_close(ours, ref)
    # the same through the sparse layout (all rows present)
    ours_sp, _ = _run(sparse.LazyAdam, [x.to_sparse(1) for x in grads], init, lr=0.01, catch_up=catch_up)
    torch.testing.assert_close(ours_sp, ref)


def test_lazy_adam_rows_are_independent_adams():
    """catch_up=False: each row is Adam on its own gradient sequence."""
    grads = _embedding_grads(6, 3, 25, 2, torch.float64, seed=5)
    init = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours, _ = _run(sparse.LazyAdam, grads, init, lr=0.02)
    for row in range(6):
        seq = []
        for grad in grads:
            dense = grad.to_dense()
            if bool((grad.coalesce().indices()[0] == row).any()):
                seq.append(dense[row])
        ref, _ = _run(torch.optim.Adam, seq, init[row], lr=0.02)
        torch.testing.assert_close(ours[row], ref)


def test_lazy_adam_catch_up_moments_equal_dense_adam():
    grads = _embedding_grads(12, 2, 25, 4, torch.float64, seed=7)
    init = torch.zeros(12, 2, dtype=torch.float64)
    _, lazy = _run(sparse.LazyAdam, grads, init, catch_up=True)
    _, dense = _run(torch.optim.Adam, [x.to_dense() for x in grads], init)
    sl, sd = next(iter(lazy.state.values())), next(iter(dense.state.values()))
    last = grads[-1].coalesce().indices()[0]
    torch.testing.assert_close(sl["exp_avg"][last], sd["exp_avg"][last])
    torch.testing.assert_close(sl["exp_avg_sq"][last], sd["exp_avg_sq"][last])
    # ...and SparseAdam's moments differ there: it never decays untouched rows
    _, sp = _run(torch.optim.SparseAdam, grads, init)
    ss = next(iter(sp.state.values()))
    assert not torch.allclose(ss["exp_avg"][last], sd["exp_avg"][last])


@pytest.mark.parametrize("dtype", DTYPES)
def test_lazy_adam_catch_up_step_equals_dense_adam_step(dtype):
    """catch_up=True: at every step, each touched row moves exactly as dense Adam
    (torch.optim.Adam on the dense gradient) moves it at that step, even though
    the two parameters differ (dense Adam also moved the row between touches)."""
    grads = _embedding_grads(15, 3, 40, 3, dtype, seed=8)
    init = torch.randn(15, 3, generator=torch.Generator().manual_seed(9), dtype=dtype)
    p_lazy, p_dense = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    lazy = sparse.LazyAdam([p_lazy], lr=0.01, catch_up=True)
    dense = torch.optim.Adam([p_dense], lr=0.01)
    # steps are differences of parameters of size ~1: float32 resolves them to ~1e-7
    rtol, atol = (1e-4, 1e-6) if dtype == torch.float32 else (1e-10, 1e-14)
    drifted = False
    for grad in grads:
        before_l, before_d = p_lazy.detach().clone(), p_dense.detach().clone()
        p_lazy.grad, p_dense.grad = grad.clone(), grad.to_dense()
        lazy.step()
        dense.step()
        rows = grad.coalesce().indices()[0]
        step_l, step_d = p_lazy.detach() - before_l, p_dense.detach() - before_d
        assert step_d[rows].abs().max() > 1e-3  # the steps compared are not negligible
        torch.testing.assert_close(step_l[rows], step_d[rows], rtol=rtol, atol=atol)
        untouched = torch.ones(15, dtype=torch.bool)
        untouched[rows] = False
        assert torch.all(step_l[untouched] == 0)
        drifted |= bool((step_d[untouched] != 0).any())
    assert drifted  # dense Adam does move untouched rows: the parameters differ, the steps agree


@pytest.mark.parametrize("kw", [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                {"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01}, {}])
def test_lazy_sgd_equals_sgd_on_dense_gradients(kw):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(15)]
    init = torch.randn(5, 4, generator=g, dtype=torch.float64)
    ours, _ = _run(sparse.LazySGD, grads, init, lr=0.1, **kw)
    ref, _ = _run(torch.optim.SGD, grads, init, lr=0.1, **kw)
    torch.testing.assert_close(ours, ref)


def test_lazy_sgd_equals_sgd_on_sparse_gradients_without_momentum():
    grads = _embedding_grads(20, 3, 15, 5, torch.float32)
    init = torch.randn(20, 3, generator=torch.Generator().manual_seed(4))
    ours, _ = _run(sparse.LazySGD, grads, init, lr=0.1)
    ref, _ = _run(torch.optim.SGD, grads, init, lr=0.1)
    torch.testing.assert_close(ours, ref)


def test_lazy_sgd_momentum_leaves_untouched_rows():
    init = torch.randn(4, 2, dtype=torch.float64)
    one = torch.ones(2, 2, dtype=torch.float64)
    g0 = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), one, (4, 2), check_invariants=True)
    g1 = torch.sparse_coo_tensor(torch.tensor([[1]]), one[:1], (4, 2), check_invariants=True)
    ours, _ = _run(sparse.LazySGD, [g0, g1], init, lr=0.1, momentum=0.9)
    torch.testing.assert_close(ours[0], init[0] - 0.1)  # not moved by momentum at step 2
    torch.testing.assert_close(ours[1], init[1] - 0.1 - 0.1 * 1.9)
    torch.testing.assert_close(ours[2:], init[2:])
    # torch's SGD keeps moving row 0 with its momentum buffer: a different algorithm
    ref, _ = _run(torch.optim.SGD, [g0, g1], init, lr=0.1, momentum=0.9)
    torch.testing.assert_close(ref[0], init[0] - 0.1 - 0.09)
    torch.testing.assert_close(ref[1:], ours[1:])


def test_lazy_bad_inputs():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="momentum"):
        sparse.LazySGD([p], momentum=-0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        sparse.LazySGD([p], nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        sparse.LazyAdam([p], lr=0)


@pytest.mark.parametrize("cls", [sparse.SparseAdam, sparse.LazyAdam, sparse.LazySGD])
def test_integer_parameters_are_refused_with_a_message(cls):
    """torch passes on "result type Float can't be cast to the desired output type Long"."""
    with pytest.raises(TypeError, match=f"gradlab.sparse.{cls.__name__} updates floating-point parameters"):
        cls([torch.zeros(3, 2, dtype=torch.int64)])


def test_bad_inputs_keep_torchs_words_and_name_the_argument():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1.0; lr must be > 0$"):
        sparse.SparseAdam([p], lr=-1.0)
    with pytest.raises(ValueError, match=r"^Invalid beta parameter at index 0: 1.0; betas\[0\] must be in \[0, 1\)$"):
        sparse.LazyAdam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match=r"betas must be a pair \(beta1, beta2\), got \(0.9,\)"):
        sparse.LazyAdam([p], betas=(0.9,))
    with pytest.raises(ValueError, match=r"^Invalid weight_decay value: -0.1; weight_decay must be >= 0$"):
        sparse.LazySGD([p], weight_decay=-0.1)


def test_density_sparse_and_dense():
    x = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert sparse.density(x) == 0.5 == sparse.density(x.to_sparse())
    assert sparse.density(torch.zeros(0)) == 0.0


# ----------------------------------------------------------------------------- CUDA


@CUDA
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    grads = _embedding_grads(40, 4, 20, 10, dtype)
    init = torch.randn(40, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for cls in (sparse.SparseAdam, sparse.LazyAdam, sparse.LazySGD):
        cpu, _ = _run(cls, grads, init, lr=0.01)
        gpu, _ = _run(cls, [x.cuda() for x in grads], init.cuda(), lr=0.01)
        torch.testing.assert_close(gpu.cpu(), cpu)
    gpu_ref, _ = _run(torch.optim.SparseAdam, [x.cuda() for x in grads], init.cuda(), lr=0.01)
    gpu_ours, _ = _run(sparse.SparseAdam, [x.cuda() for x in grads], init.cuda(), lr=0.01)
    torch.testing.assert_close(gpu_ours, gpu_ref)
