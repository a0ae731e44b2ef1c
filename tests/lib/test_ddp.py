"""gradlab.ddp: the DDP communication hooks (one in-process gloo group) and the training
script under torchrun with two real processes, against torch's own PowerSGD hook."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from gradlab.compress import payload_bytes
from gradlab.ddp import PowerSGDState, powerSGD_hook


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("call, match", [
    (lambda: PowerSGDState(start_powerSGD_iter=-1), "start_powerSGD_iter"),
    (lambda: PowerSGDState(min_compression_rate=-1), "min_compression_rate must be >= 0"),
    (lambda: PowerSGDState(nonfinite="ignore"), "nonfinite must be 'skip'"),
    (lambda: PowerSGDState(max_norm=-1.0), "max_norm must be"),
    (lambda: PowerSGDState(matrix_approximation_rank=0), "rank must be an int >= 1"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_scaler_without_get_scale_is_refused():
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        PowerSGDState(scaler=65536.0)


def torch_state_default(name):
    import inspect

    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState as TorchState

    return inspect.signature(TorchState.__init__).parameters[name].default


def test_state_defaults_are_torchs():
    ours = PowerSGDState()
    assert ours.matrix_approximation_rank == torch_state_default("matrix_approximation_rank") == 1
    assert ours.start_powerSGD_iter == torch_state_default("start_powerSGD_iter")


class _Bucket:
    """The part of torch's GradBucket that the hooks use; the gradients are views of the buffer."""

    def __init__(self, params, grads):
        self._buf = torch.cat([g.reshape(-1) for g in grads])
        self._params, self._grads, offset = params, [], 0
        for g in grads:
            self._grads.append(self._buf[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def buffer(self):
        return self._buf

    def gradients(self):
        return self._grads

    def parameters(self):
        return self._params

    def is_last(self):
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_hook_clips_and_passes_a_nonfinite_bucket_through(one_process_group):
    """gradlab's hook in a real (1-process) gloo group: clipping bounds the local norm, an inf bucket
    comes out as inf (not NaN, as scaling by max_norm / inf = 0 would give), the error buffers are
    untouched by it, and the next steps are finite."""

    params = [torch.zeros(16, 12), torch.zeros(12), torch.zeros(10, 16)]
    grads = [10 * randn(*p.shape, dtype=torch.float32, seed=i) for i, p in enumerate(params)]
    state = PowerSGDState(matrix_approximation_rank=1, start_powerSGD_iter=0, max_norm=1.0)
    for _ in range(3):
        powerSGD_hook(state, _Bucket(params, grads)).wait()
        assert state.grad_norm <= 1.0 * (1 + 1e-6)
    errors = {k: e.clone() for k, e in state.compressor.errors.items()}
    spiked = [g.clone() for g in grads]
    spiked[0][3, 4] = math.inf
    out = powerSGD_hook(state, _Bucket(params, spiked)).wait()
    assert torch.isinf(out).any() and not torch.isnan(out).any()
    assert state.skipped_steps == 1 and state.compressed_steps == 3 and state.grad_norm == math.inf
    assert all(torch.equal(state.compressor.errors[k], e) for k, e in errors.items())
    out = powerSGD_hook(state, _Bucket(params, grads)).wait()
    assert torch.isfinite(out).all() and math.isfinite(state.error_norm()) and state.compressed_steps == 4


def test_hook_output_is_the_compressors_approximation(one_process_group):
    """In a 1-process group the hook must return exactly what PowerSGD.compress_many computes for the
    matrices (with the same state: warm start and error feedback over several steps) and the
    vectors unchanged (the mean over one worker)."""

    params = [torch.zeros(16, 12), torch.zeros(12), torch.zeros(10, 16)]
    state = PowerSGDState(matrix_approximation_rank=2, start_powerSGD_iter=0, random_seed=3)
    twin = copy.deepcopy(state.compressor)
    for step in range(3):
        grads = [randn(*p.shape, dtype=torch.float32, seed=10 * step + i) for i, p in enumerate(params)]
        out = powerSGD_hook(state, _Bucket(params, [g.clone() for g in grads])).wait()
        mats = [(id(p), g) for p, g in zip(params, grads) if g.ndim == 2]
        expected = twin.compress_many([k for k, _ in mats], [g for _, g in mats])
        sizes = [g.numel() for g in grads]
        parts = out.split(sizes)
        torch.testing.assert_close(parts[0].view(16, 12), expected[0])
        torch.testing.assert_close(parts[1], grads[1])
        torch.testing.assert_close(parts[2].view(10, 16), expected[1])
        assert not torch.allclose(parts[0].view(16, 12), grads[0])  # rank 2 of a random 16 x 12: not exact
    assert state.compressed_steps == 3 and state.skipped_steps == 0


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_hook_treats_a_nonfinite_bias_like_a_nonfinite_matrix(one_process_group, nonfinite):
    """An overflow only in an uncompressed vector (a bias, as under AMP) must also leave the
    compressor's state alone (or raise): the step will be skipped, so nothing may be absorbed."""

    params = [torch.zeros(16, 12), torch.zeros(12)]
    grads = [randn(*p.shape, dtype=torch.float32, seed=i) for i, p in enumerate(params)]
    state = PowerSGDState(matrix_approximation_rank=1, start_powerSGD_iter=0, nonfinite=nonfinite)
    powerSGD_hook(state, _Bucket(params, grads)).wait()
    errors = {k: e.clone() for k, e in state.compressor.errors.items()}
    qs = {k: q.clone() for k, q in state.compressor.qs.items()}
    spiked = [g.clone() for g in grads]
    spiked[1][5] = math.inf  # the bias only; the matrix is finite
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError, match="not finite"):
            powerSGD_hook(state, _Bucket(params, spiked)).wait()
    else:
        out = powerSGD_hook(state, _Bucket(params, spiked)).wait()
        assert torch.isinf(out).any()
        torch.testing.assert_close(out[:16 * 12].view(16, 12), spiked[0])  # the matrix went through as is
        assert state.skipped_steps == 1 and state.compressed_steps == 1
    assert all(torch.equal(state.compressor.errors[k], e) for k, e in errors.items())
    assert all(torch.equal(state.compressor.qs[k], q) for k, q in qs.items())


def test_hook_without_clipping_reports_the_unclipped_norm(one_process_group):

    params = [torch.zeros(16, 12)]
    grads = [10 * randn(16, 12, dtype=torch.float32)]
    state = PowerSGDState(start_powerSGD_iter=0)
    powerSGD_hook(state, _Bucket(params, grads)).wait()
    assert state.grad_norm == pytest.approx(torch.linalg.vector_norm(grads[0]).item(), rel=1e-6)


class _Scaler:
    """What the hook uses of torch.amp.GradScaler: get_scale()."""

    def __init__(self, scale):
        self.scale = scale

    def get_scale(self):
        return self.scale


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_scale_aware_hook_works_in_unscaled_units(one_process_group, max_norm):
    """Under loss scaling the hook sees S * g. With the scaler it must return exactly S times what
    the hook returns for g without scaling (clipping and error buffers in unscaled units), also when S
    changes between steps; without the scaler, max_norm clips S times too hard and the error buffer
    is off by the ratio of the scales after a change (the controls that make this test able to fail)."""

    params = [torch.zeros(16, 12), torch.zeros(12), torch.zeros(10, 16)]
    kw = dict(matrix_approximation_rank=1, start_powerSGD_iter=1, max_norm=max_norm, random_seed=3)
    scaler = _Scaler(2.0**16)
    plain, aware, unaware = PowerSGDState(**kw), PowerSGDState(**kw, scaler=scaler), PowerSGDState(**kw)
    unaware_matches = []
    for step, scale in enumerate([2.0**16, 2.0**16, 2.0**17, 2.0**17, 2.0**16]):
        scaler.scale = scale
        grads = [3 * randn(*p.shape, dtype=torch.float32, seed=10 * step + i) for i, p in enumerate(params)]
        want = powerSGD_hook(plain, _Bucket(params, [g.clone() for g in grads])).wait()
        got = powerSGD_hook(aware, _Bucket(params, [scale * g for g in grads])).wait()
        torch.testing.assert_close(got, scale * want, rtol=1e-6, atol=0)
        assert aware.grad_norm == pytest.approx(plain.grad_norm, rel=1e-6)
        assert aware.error_norm() == pytest.approx(plain.error_norm(), rel=1e-6)
        other = powerSGD_hook(unaware, _Bucket(params, [scale * g for g in grads])).wait()
        unaware_matches.append(torch.allclose(other, scale * want, rtol=1e-4, atol=0))
    if max_norm is None:  # exact until the scale changes at step 2, wrong after it
        assert unaware_matches[:2] == [True, True] and not all(unaware_matches[2:])
    else:  # clipped 2**16 times too hard from the first compressed step
        assert not any(unaware_matches[1:])


def test_two_process_gloo_own_hook_matches_torch_hook(tmp_path):
    """torchrun, 2 gloo workers on 127.0.0.1: gradlab's hook sends exactly the bytes of
    torch's powerSGD_hook and reaches a comparable loss; plain all-reduce sends 4 bytes/param."""
    out = tmp_path / "runs.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "-m", "gradlab.ddp_train",
           "--steps", "40", "--hidden", "64", "--batch", "128", "--out", str(out),
           "--config", "name=plain,hook=allreduce",
           "--config", "name=torch,hook=torch,rank=2,start=2,min_rate=2",
           "--config", "name=ours,hook=gradlab,rank=2,start=2,min_rate=2",
           "--config", "name=from0,hook=gradlab,rank=2,start=0,min_rate=0",
           "--config", "name=clip,hook=gradlab,rank=2,start=2,min_rate=2,clip=0.25",
           "--config", "name=scaled,hook=gradlab,rank=2,start=2,min_rate=2,loss_scale=65536,growth=10,scale_aware=1",
           "--config", "name=seed1,hook=allreduce,seed=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    plain, theirs, ours, from0, clip, scaled, seed1 = record["runs"]
    assert record["world_size"] == 2
    assert plain["bytes_per_step"] == [plain["dense_bytes_per_step"]] * 40
    assert ours["bytes_per_step"] == theirs["bytes_per_step"]
    expected = payload_bytes(ours["shapes"], "powersgd", rank=2, min_compression_rate=2)
    assert ours["bytes_per_step"][2:] == [expected] * 38 and expected < plain["dense_bytes_per_step"] / 4
    assert ours["losses"][:2] == theirs["losses"][:2] == plain["losses"][:2]
    assert len(ours["grad_norms"]) == 40 and all(0 < g < math.inf for g in ours["grad_norms"])
    assert ours["losses"][-1] < 0.7 * ours["losses"][0]
    assert abs(math.log(ours["losses"][-1] / theirs["losses"][-1])) < math.log(2)
    # keyed by parameter, gradlab's state survives DDP's bucket rebuild: compression from step 0
    assert from0["bytes_per_step"] == [payload_bytes(ours["shapes"], "powersgd", rank=2, min_compression_rate=0)] * 40
    assert from0["losses"][-1] < 0.8 * from0["losses"][0]
    # max_norm clips each worker's gradient inside the hook (the norm is measured after clipping):
    # bounded by 0.25, clipped at many steps (0.25 is about the median norm), a smaller error buffer
    assert all(g <= 0.25 * (1 + 1e-6) for g in clip["grad_norms"])
    assert sum(g > 0.25 * (1 - 1e-3) for g in clip["grad_norms"]) >= 5
    assert max(clip["error_norms"]) < 0.7 * max(ours["error_norms"])
    assert clip["losses"][-1] < 0.8 * clip["losses"][0] and clip["skipped_steps"] == ours["skipped_steps"] == 0
    # GradScaler's loss scaling (float32, the scale doubling every 10 steps) with the scaler handed to the
    # hook: powers of two scale exactly, so the run must reproduce the unscaled one
    assert scaled["loss_scales"][:10] == [65536.0] * 10 and scaled["loss_scales"][-1] == 65536.0 * 2**3
    assert max(abs(a - b) / b for a, b in zip(scaled["losses"], ours["losses"])) < 1e-6
    # a configuration's own seed: another data split, initialisation and batches
    assert seed1["config"]["seed"] == 1 and plain["config"]["seed"] == 0
    assert seed1["losses"][0] != plain["losses"][0]
