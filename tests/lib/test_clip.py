"""gradlab.clip against torch.nn.utils, AGC against its formula, and clipping's invariants."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab.clip import (
    AdaptiveClipper,
    FlatGradients,
    adaptive_clip_grad_,
    clip_grad_norm_,
    clip_grad_value_,
    unitwise_norm,
)

DTYPES = [torch.float32, torch.float64]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_params(shapes, dtype=torch.float32, scale=1.0, seed=0, device="cpu", missing=()):
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_()
        if i not in missing:
            p.grad = (scale * torch.randn(shape, generator=g, dtype=dtype)).to(device)
        params.append(p)
    return params


SHAPES = [(7, 3), (5,), (2, 3, 4), (1,), (16, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("max_norm, scale", [(1.0, 1.0), (0.1, 5.0), (100.0, 0.01)])
def test_clip_grad_norm_matches_torch(dtype, norm_type, foreach, max_norm, scale):
    ours = make_params(SHAPES, dtype, scale, missing={3})
    ref = copy.deepcopy(ours)
    total = clip_grad_norm_(ours, max_norm, norm_type, foreach=foreach)
    total_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type, foreach=foreach)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(total, total_ref, **tol)
    for a, b in zip(ours, ref):
        if b.grad is None:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, **tol)


def test_single_tensor_and_empty():
    p = make_params([(4, 4)])[0]
    q = copy.deepcopy(p)
    torch.testing.assert_close(clip_grad_norm_(p, 0.5), torch.nn.utils.clip_grad_norm_(q, 0.5))
    torch.testing.assert_close(p.grad, q.grad)
    assert clip_grad_norm_([], 1.0).item() == 0.0
    no_grads = make_params([(3,)], missing={0})
    assert clip_grad_norm_(no_grads, 1.0).item() == torch.nn.utils.clip_grad_norm_(no_grads, 1.0).item() == 0.0


def test_zero_gradients_stay_zero():
    params = make_params([(5,), (3, 3)], scale=0.0)
    assert clip_grad_norm_(params, 1.0).item() == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in params)


def test_inf_gradients_match_torch_and_can_raise():
    ours = make_params([(4,), (3,)])
    ours[0].grad[1] = math.inf
    ref = copy.deepcopy(ours)
    total = clip_grad_norm_(ours, 1.0)
    total_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert math.isinf(total.item()) and math.isinf(total_ref.item())
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, equal_nan=True)
    bad = make_params([(4,)])
    bad[0].grad[0] = math.nan
    with pytest.raises(RuntimeError, match="Skip this step"):
        clip_grad_norm_(bad, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):  # torch raises too
        torch.nn.utils.clip_grad_norm_(copy.deepcopy(bad), 1.0, error_if_nonfinite=True)


def test_mixed_dtypes_match_torch():
    ours = make_params([(3, 3)], torch.float32, seed=1) + make_params([(4,)], torch.float64, seed=2)
    ref = copy.deepcopy(ours)
    torch.testing.assert_close(clip_grad_norm_(ours, 0.3), torch.nn.utils.clip_grad_norm_(ref, 0.3))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)


@cuda
def test_mixed_devices_match_torch():
    ours = make_params([(3, 3)], seed=1) + make_params([(4,)], seed=2, device="cuda")
    ref = copy.deepcopy(ours)
    torch.testing.assert_close(clip_grad_norm_(ours, 0.3), torch.nn.utils.clip_grad_norm_(ref, 0.3))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("fn", [clip_grad_norm_, clip_grad_value_])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_thresholds(fn, bad):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        fn(make_params([(3,)]), bad)


def test_bad_norm_type_and_type_errors():
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(make_params([(3,)]), 1.0, norm_type=-2)
    with pytest.raises(TypeError, match="max_norm must be a number"):
        clip_grad_norm_(make_params([(3,)]), "1.0")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("foreach", [None, True, False])
def test_clip_grad_value_matches_torch(dtype, foreach):
    ours = make_params(SHAPES, dtype, scale=3.0, missing={1})
    ref = copy.deepcopy(ours)
    clip_grad_value_(ours, 0.7, foreach=foreach)
    torch.nn.utils.clip_grad_value_(ref, 0.7, foreach=foreach)
    for a, b in zip(ours, ref):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
    scale=st.floats(1e-4, 1e4),
    max_norm=st.floats(1e-3, 1e3),
    seed=st.integers(0, 10_000),
)
def test_norm_clipping_never_increases_norm_and_keeps_direction(shapes, scale, max_norm, seed):
    params = make_params(shapes, torch.float64, scale, seed)
    before = torch.cat([p.grad.flatten() for p in params])
    total = clip_grad_norm_(params, max_norm)
    after = torch.cat([p.grad.flatten() for p in params])
    assert after.norm() <= before.norm() * (1 + 1e-12)
    assert after.norm() <= max_norm * (1 + 1e-9) or total <= max_norm
    cosine = torch.dot(before, after) / (before.norm() * after.norm())
    assert cosine.item() == pytest.approx(1.0, abs=1e-12)
    assert total.item() == pytest.approx(before.norm().item(), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 1e3), clip=st.floats(1e-3, 10), seed=st.integers(0, 1000))
def test_value_clipping_bounds_entries_and_never_increases_them(scale, clip, seed):
    params = make_params([(5, 4)], torch.float64, scale, seed)
    before = params[0].grad.clone()
    clip_grad_value_(params, clip)
    assert params[0].grad.abs().max() <= clip
    assert torch.all(params[0].grad.abs() <= before.abs())


def agc_reference(w, g, clipping, eps):
    """AGC written out unit by unit from Brock et al. (2021), eq. 3."""
    out = g.clone()
    units = [slice(None)] if w.ndim <= 1 else range(w.shape[0])
    for i in units:
        w_norm = max(w[i].norm().item(), eps)
        g_norm = g[i].norm().item()
        if g_norm / w_norm > clipping:
            out[i] = g[i] * (clipping * w_norm / g_norm)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clipping", [0.01, 0.1, 1.0])
def test_agc_matches_formula(dtype, clipping):
    params = make_params([(6, 4), (6,), (3, 2, 3, 3)], dtype, scale=0.3)
    with torch.no_grad():
        params[0][2].zero_()  # a zero unit: eps keeps it trainable
    expected = [agc_reference(p.detach(), p.grad, clipping, 1e-3) for p in params]
    frac = adaptive_clip_grad_(params, clipping=clipping)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)
    assert 0.0 <= frac.item() <= 1.0


def test_agc_unit_layout_is_rows():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert torch.equal(unitwise_norm(w).flatten(), torch.tensor([5.0, 1.0]))
    p = w.clone().requires_grad_()
    p.grad = torch.tensor([[1.0, 0.0], [10.0, 0.0]])
    frac = adaptive_clip_grad_([p], clipping=0.5)
    # row 0: 1/5 <= 0.5 untouched; row 1: 10/1 > 0.5 -> norm 0.5
    assert torch.equal(p.grad[0], torch.tensor([1.0, 0.0]))
    assert p.grad[1].norm().item() == pytest.approx(0.5)
    assert frac.item() == 0.5
    with pytest.raises(ValueError, match="clipping"):
        adaptive_clip_grad_([p], clipping=-0.1)


def test_adaptive_clipper_warmup_quantile_and_state():
    clipper = AdaptiveClipper(quantile=0.5, window=10, warmup=3)
    norms = []
    for k, scale in enumerate([1.0, 2.0, 3.0, 100.0, 2.0]):
        p = torch.zeros(4, requires_grad=True)
        p.grad = torch.full((4,), scale / 2)  # norm = scale
        norm, limit = clipper([p])
        norms.append(norm)
        if k < 3:
            assert math.isinf(limit)
            assert p.grad.norm().item() == pytest.approx(scale)
        else:
            assert limit == 2.0  # median of the history so far
            assert p.grad.norm().item() <= 2.0 + 1e-5
    assert norms == pytest.approx([1, 2, 3, 100, 2])  # unclipped norms are recorded
    restored = AdaptiveClipper()
    restored.load_state_dict(clipper.state_dict())
    assert restored.threshold() == clipper.threshold() and restored.window == 10
    with pytest.raises(ValueError, match="quantile"):
        AdaptiveClipper(quantile=0)
    with pytest.raises(ValueError, match="initial"):
        AdaptiveClipper(initial=-1.0)


def test_adaptive_clipper_initial_threshold_during_warmup():
    clipper = AdaptiveClipper(quantile=0.5, window=10, warmup=3, initial=1.0)
    p = torch.zeros(4, requires_grad=True)
    p.grad = torch.full((4,), 50.0)
    norm, limit = clipper([p])
    assert limit == 1.0 and norm == pytest.approx(100.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="warmup"):
        AdaptiveClipper(window=5, warmup=10)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(2), torch.tensor(0.5)])
def test_numpy_and_tensor_thresholds_are_accepted_like_torch(value):
    ours, ref = make_params(SHAPES, scale=3.0), make_params(SHAPES, scale=3.0)
    torch.testing.assert_close(clip_grad_norm_(ours, value), torch.nn.utils.clip_grad_norm_(ref, value))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)


def test_each_threshold_error_gives_advice_for_that_threshold():
    with pytest.raises(ValueError, match="Brock et al"):
        adaptive_clip_grad_(make_params([(3, 3)]), clipping=-0.01)
    with pytest.raises(ValueError, match="max_norm.*gradient norms you observe"):
        clip_grad_norm_(make_params([(3,)]), -1.0)
    with pytest.raises(ValueError, match=r"max_norm must be a number or a 1-element tensor, got a tensor of shape"):
        clip_grad_norm_(make_params([(3,)]), torch.ones(2))
    with pytest.raises(TypeError, match="must be a number"):
        clip_grad_norm_(make_params([(3,)]), True)


def test_adaptive_clipper_whole_history_and_nonfinite_norms():
    clipper = AdaptiveClipper(quantile=0.5, window=None, warmup=2)  # AutoClip: every norm seen
    for scale in [1.0, 2.0, 3.0, 4.0, 5.0] * 60:
        p = torch.zeros(1, requires_grad=True)
        p.grad = torch.tensor([scale])
        clipper([p])
    assert len(clipper.history) == 300 and clipper.threshold() == 3.0
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([math.inf, 1.0])
    norm, _ = clipper([p])
    assert math.isinf(norm) and len(clipper.history) == 300  # never enters the history
    strict = AdaptiveClipper(warmup=1, error_if_nonfinite=True)
    p.grad = torch.tensor([math.nan, 1.0])
    with pytest.raises(RuntimeError, match="Skip this step"):
        strict([p])  # during warm-up (no clipping yet)
    p.grad = torch.tensor([1.0, 1.0])
    strict([p])
    p.grad = torch.tensor([math.inf, 1.0])
    with pytest.raises(RuntimeError, match="Skip this step"):
        strict([p])  # and after it
    restored = AdaptiveClipper()
    restored.load_state_dict(strict.state_dict())
    assert restored.error_if_nonfinite and list(restored.history) == list(strict.history)


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def _backward(model, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=g, dtype=next(model.parameters()).dtype)
    (scale * model(x).pow(2).sum()).backward()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_flat_gradients_accumulate_in_place_and_clip_like_torch(norm_type, max_norm):
    ours, ref = _mlp(), _mlp()
    flat = FlatGradients(ours.parameters())
    for seed in (1, 2):  # two backward passes: autograd accumulates into the views
        _backward(ours, seed)
        _backward(ref, seed)
    (buf,) = flat.buffers.values()
    for p in ours.parameters():  # every gradient still lives in the buffer
        assert buf.data_ptr() <= p.grad.data_ptr() < buf.data_ptr() + buf.numel() * buf.element_size()
    total = flat.clip_norm_(max_norm, norm_type)
    total_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
    torch.testing.assert_close(total, total_ref)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_flat_gradients_survive_zero_grad_set_to_none_and_train_like_torch():
    ours, ref = _mlp(), _mlp()
    flat = FlatGradients(ours.parameters())
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(4):
        opt.zero_grad()  # set_to_none=True: the views are dropped ...
        opt_ref.zero_grad()
        _backward(ours, step, scale=10.0)
        _backward(ref, step, scale=10.0)
        total = flat.clip_norm_(1.0)  # ... and bound again, with autograd's fresh gradient copied in
        total_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        torch.testing.assert_close(total, total_ref)
        opt.step()
        opt_ref.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    flat.zero_()
    assert all(torch.count_nonzero(p.grad) == 0 for p in ours.parameters())
    assert float(flat.norm()) == 0.0


def test_flat_gradients_mixed_dtypes_value_clipping_and_errors():
    a, b = _mlp(0, torch.float32), _mlp(1, torch.float64)
    ref_a, ref_b = _mlp(0, torch.float32), _mlp(1, torch.float64)
    flat = FlatGradients(list(a.parameters()) + list(b.parameters()))
    assert len(flat.buffers) == 2  # one buffer per dtype
    for model in (a, b, ref_a, ref_b):
        _backward(model, 3)
    ref_params = list(ref_a.parameters()) + list(ref_b.parameters())
    torch.testing.assert_close(flat.norm(), torch.nn.utils.get_total_norm([p.grad for p in ref_params]))
    flat.clip_value_(0.5)
    torch.nn.utils.clip_grad_value_(ref_params, 0.5)
    for p, q in zip(flat.params, ref_params):
        assert torch.equal(p.grad, q.grad)
    for p in flat.params:
        p.grad.fill_(math.inf)
    with pytest.raises(RuntimeError, match="Skip this step"):
        flat.clip_norm_(1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
        flat.clip_norm_(-1.0)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires a gradient"):
        FlatGradients(frozen.parameters())


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_nonfinite_gradients_raise_like_torch(norm_type, bad):
    ours = make_params([(4,), (3,)])
    ours[1].grad[2] = bad
    with pytest.raises(RuntimeError, match="Skip this step"):
        clip_grad_norm_(ours, 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(copy.deepcopy(ours), 1.0, norm_type, error_if_nonfinite=True)


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_empty_and_zero_cases_return_what_torch_returns(norm_type):
    for ours in ([], make_params([(3,), (2, 2)], missing={0, 1}), make_params([(3,), (2, 2)], scale=0.0)):
        ref = copy.deepcopy(ours)
        total = clip_grad_norm_(ours, 1.0, norm_type)
        total_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type)
        torch.testing.assert_close(total, total_ref)
        for a, b in zip(ours, ref):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                assert torch.equal(a.grad, b.grad)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 1e3), clipping=st.floats(1e-3, 1.0), seed=st.integers(0, 1000))
def test_agc_never_increases_a_units_gradient_norm(scale, clipping, seed):
    params = make_params([(6, 5), (4, 3, 2, 2), (7,)], dtype=torch.float64, scale=scale, seed=seed)
    before = [unitwise_norm(p.grad).clone() for p in params]
    adaptive_clip_grad_(params, clipping=clipping)
    for p, b in zip(params, before):
        after = unitwise_norm(p.grad)
        assert torch.all(after <= b * (1 + 1e-12))
        # and every unit ends at or below its allowed ratio to the weight norm
        allowed = clipping * unitwise_norm(p.detach()).clamp(min=1e-3)
        assert torch.all(after <= torch.maximum(allowed, b) * (1 + 1e-9))
        assert torch.all((after <= allowed * (1 + 1e-9)) | torch.isclose(after, b))


def test_foreach_true_on_a_device_without_foreach_kernels_raises_like_torch():
    params = [torch.zeros(3, device="meta", requires_grad=True)]
    params[0].grad = torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="foreach=True"):
        clip_grad_norm_(params, 1.0, foreach=True)
    with pytest.raises(RuntimeError, match="foreach=True"):
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)


def test_flat_gradients_norm_of_a_long_float32_buffer_is_accurate():
    """One float32 reduction over millions of entries loses digits on a CPU; the flat
    buffer's norm must stay as accurate as torch's per-tensor clip_grad_norm_."""
    g = torch.Generator().manual_seed(0)
    params = [torch.zeros(2**20, requires_grad=True) for _ in range(4)]
    for p in params:
        p.grad = torch.randn(2**20, generator=g)
    exact = float(torch.linalg.vector_norm(torch.cat([p.grad.double() for p in params])))
    torch_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    flat = FlatGradients(params)
    assert abs(float(flat.norm()) / exact - 1) <= max(2 * abs(torch_norm / exact - 1), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("foreach", [None, True, False])
def test_clip_grad_norm_is_bit_identical_to_torch(dtype, norm_type, foreach):
    """The clip path computes the norm in the gradients' dtype, as torch does: not only close
    to torch's result, equal to it, norm and clipped gradients alike."""
    ours = make_params(SHAPES, dtype, scale=3.0, seed=4)
    ref = copy.deepcopy(ours)
    total = clip_grad_norm_(ours, 1.0, norm_type, foreach=foreach)
    total_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type, foreach=foreach)
    assert total.dtype == total_ref.dtype and torch.equal(total, total_ref)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, ref))


def test_float32_overflow_is_torchs_on_the_clip_path():
    """Gradients of 1e20 in float32: torch's norm (and so ours on the clip path) is inf."""
    ours = make_params([(10,), (5,)], scale=0.0)
    for p in ours:
        p.grad.fill_(1e20)
    ref = copy.deepcopy(ours)
    assert math.isinf(clip_grad_norm_(ours, 1.0).item())
    assert math.isinf(torch.nn.utils.clip_grad_norm_(ref, 1.0).item())


@pytest.mark.parametrize("bad", ["fro", "nuc", None, [2.0]])
def test_norm_type_that_is_no_number_names_the_argument(bad):
    """torch says only "could not convert string to float: 'fro'"."""
    with pytest.raises(ValueError, match=r"norm_type must be a number > 0 or inf .*, got "):
        clip_grad_norm_(make_params([(3,)]), 1.0, norm_type=bad)
    with pytest.raises(ValueError, match="norm_type must be"):
        FlatGradients(make_params([(3,)])).norm(bad)


@pytest.mark.parametrize("norm_type", ["inf", "2", 2, np.float64(3.0)])
def test_norm_type_as_torch_converts_it(norm_type):
    ours = make_params(SHAPES, scale=3.0)
    ref = copy.deepcopy(ours)
    torch.testing.assert_close(clip_grad_norm_(ours, 1.0, norm_type),
                               torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type), rtol=0, atol=0)


def test_empty_generator_warns_like_torch():
    """torch warns that no clipping will occur when ``parameters`` is an empty generator."""
    with pytest.warns(UserWarning, match="empty generator, no gradient clipping will occur"):
        torch.nn.utils.clip_grad_norm_((p for p in []), 1.0)
    with pytest.warns(UserWarning, match="empty generator, no gradient clipping will occur"):
        total = clip_grad_norm_((p for p in []), 1.0)
    assert total.item() == 0.0
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_grad_norm_(model.parameters(), 1.0)  # a generator that is not empty: no warning
        clip_grad_norm_([], 1.0)  # an empty list: no warning either, as in torch
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_clip_value_errors_speak_of_entries_not_norms():
    with pytest.raises(ValueError, match="clip_value must be a finite number > 0, got -1.*largest magnitude "
                                         "allowed for one gradient entry") as info:
        clip_grad_value_(make_params([(3,)]), -1.0)
    assert "norm" not in str(info.value)
    with pytest.raises(ValueError, match="largest magnitude allowed for one gradient entry"):
        FlatGradients(make_params([(3,)])).clip_value_(0.0)


def test_flat_gradients_sparse_parameter_error_does_not_point_at_clip_grad_norm():
    """torch's (and gradlab's) clip_grad_norm_ cannot take the norm of sparse tensors either."""
    p = torch.zeros(4, 2).to_sparse().requires_grad_()
    with pytest.raises(ValueError, match="leave them out of FlatGradients") as info:
        FlatGradients([p])
    assert "clip_grad_norm_" not in str(info.value)
