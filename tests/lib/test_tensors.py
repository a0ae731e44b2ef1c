"""gradlab._tensors: the one global norm (against torch.nn.utils.get_total_norm on float64
copies), the foreach choice and the device/dtype grouping."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab._tensors import global_norm, group_by_device_dtype, use_foreach

NORM_TYPES = [1.0, 2.0, 3.0, 0.5, math.inf]


def _tensors(shapes, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for s in shapes]


def _reference(tensors, norm_type):
    """torch is the judge: its get_total_norm of float64 copies."""
    return torch.nn.utils.get_total_norm([t.double() for t in tensors], norm_type)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_global_norm_matches_torch_on_float64_copies(norm_type, foreach, dtype):
    ts = _tensors([(7, 3), (5,), (2, 3, 4), (1,)], dtype, scale=3.0)
    ours = global_norm(ts, norm_type, foreach=foreach)
    assert ours.dtype == torch.float64 and ours.dim() == 0
    torch.testing.assert_close(ours, _reference(ts, norm_type), rtol=1e-13, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_global_norm_does_not_overflow_by_default(norm_type, dtype):
    """Float32 gradients of 1e20 give 1e20 * n**(1/q) (1e20 * sqrt(n) for the 2-norm), not inf:
    the failure chapter 1 teaches. In their own dtype (dtype=None, torch's result) they overflow."""
    big = {torch.float32: 1e20, torch.float16: 6e4, torch.bfloat16: 1e30}[dtype]
    ts = [torch.full((10,), big, dtype=dtype), torch.full((5,), -big, dtype=dtype)]
    value = float(ts[0][0])  # the entry as stored in dtype
    expected = value if norm_type == math.inf else value * 15 ** (1 / norm_type)
    assert float(global_norm(ts, norm_type)) == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(global_norm(ts, norm_type), _reference(ts, norm_type), rtol=1e-13, atol=0)
    if 1 < norm_type < math.inf:  # powers of the entries overflow; the 1-norm and max-norm do not
        assert math.isinf(float(global_norm(ts, norm_type, dtype=None)))
        assert math.isinf(float(torch.nn.utils.get_total_norm(ts, norm_type)))


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("foreach", [None, True, False])
def test_dtype_none_is_torchs_get_total_norm_exactly(norm_type, foreach):
    """dtype=None: each group in its own dtype, as torch computes it (bit for bit)."""
    ts = _tensors([(7, 3), (5,)], torch.float32, seed=1) + _tensors([(4,), (2, 2)], torch.float64, seed=2)
    ours = global_norm(ts, norm_type, dtype=None, foreach=foreach)
    ref = torch.nn.utils.get_total_norm(ts, norm_type, foreach=foreach)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)


def test_complex_tensors_and_the_device_of_the_result():
    c = torch.randn(4, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    r = torch.randn(5, generator=torch.Generator().manual_seed(1))
    ours = global_norm([c, r])
    ref = torch.nn.utils.get_total_norm([c.to(torch.complex128), r.double()])
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=0)
    assert global_norm([r], device=torch.device("meta")).device.type == "meta"


def test_no_tensors_is_zero():
    assert torch.equal(global_norm([]), torch.zeros((), dtype=torch.float64))
    assert torch.equal(global_norm([], dtype=None), torch.tensor(0.0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=6), st.floats(1e-30, 1e30), st.integers(0, 10_000))
def test_global_norm_is_the_norm_of_the_concatenation(sizes, scale, seed):
    ts = _tensors([(n,) for n in sizes], torch.float32, scale=scale, seed=seed)
    flat = torch.cat([t.double() for t in ts])
    torch.testing.assert_close(global_norm(ts), torch.linalg.vector_norm(flat), rtol=1e-12, atol=0)


def test_use_foreach_policies():
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    assert use_foreach(None, [cpu]) and not use_foreach(None, [cpu], default=("cuda",))
    assert use_foreach(None, [cuda], default=("cuda",)) and not use_foreach(None, [])
    assert not use_foreach(None, [meta]) and not use_foreach(False, [cpu])
    assert use_foreach(True, [meta], strict=False)
    with pytest.raises(RuntimeError, match="foreach=True was passed, but the multi-tensor kernels do not "
                                           "support meta tensors; pass foreach=None"):
        use_foreach(True, [cpu, meta])


def test_group_by_device_dtype_keeps_parallel_lists_in_order():
    a, b, c = torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.ones(1)
    groups = group_by_device_dtype([a, b, c], ["a", "b", "c"], [0, 1, 2])
    assert list(groups) == [(a.device, torch.float32), (b.device, torch.float64)]
    assert groups[(a.device, torch.float32)][1:] == [["a", "c"], [0, 2]]
    assert groups[(b.device, torch.float64)][1:] == [["b"], [1]]
