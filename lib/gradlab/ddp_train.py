"""Data-parallel training of an MLP on the digits with gradient compression.

Runs real ``torch.distributed`` processes (gloo on CPU, NCCL on GPUs) under
``DistributedDataParallel`` and compares communication hooks:

* ``allreduce``: torch's own ``default_hooks.allreduce_hook`` (what DDP does);
* ``torch``: torch's ``powerSGD_hook`` (``PowerSGDState``);
* ``gradlab``: :func:`gradlab.ddp.powerSGD_hook`, optionally with ``clip``
  (the local gradient is clipped before it is compressed); with a ``start``
  beyond ``--steps`` it never compresses, which gives all-reduce with the local
  gradient clipped.

Mixed precision's loss scaling, in float32 (so that only the scale, not
float16's range, differs from an unscaled run): ``loss_scale=S`` trains with
``torch.amp.GradScaler(init_scale=S, growth_interval=growth)``, so the hooks see
gradients multiplied by the scale, which doubles every ``growth`` steps;
``scale_aware=1`` hands the scaler to gradlab's hook (``PowerSGDState(scaler=...)``);
``clip_after=c`` clips the averaged gradient with ``clip_grad_norm_`` after
``backward()`` (after ``scaler.unscale_``), torch's usual recipe.

One launch trains several configurations one after the other, so the processes
start once. Each configuration uses ``--seed`` unless it names its own
``seed=``; the seed fixes the data split, the initial weights, the batches and
PowerSGD's random start. On one machine::

    torchrun --standalone --nproc_per_node 2 -m gradlab.ddp_train \
        --config name=plain,hook=allreduce \
        --config name=powersgd4,hook=gradlab,rank=4,start=2,min_rate=0 --out runs.json

On several machines, run the same command on every node; the c10d rendezvous
assigns the node ranks (``--node_rank`` is only for the static rendezvous)::

    torchrun --nnodes 2 --nproc_per_node 8 \
        --rdzv_backend c10d --rdzv_endpoint HOST:29400 --rdzv_id JOB -m gradlab.ddp_train ...

Bytes are counted by wrapping ``torch.distributed.all_reduce``, through which
every hook here communicates: the payload each worker hands to all-reduce.
Rank 0 writes one JSON object with one entry per run (``--out -`` prints it).
The script ships inside gradlab, so it runs wherever gradlab is installed
(Colab included), with ``-m gradlab.ddp_train`` instead of a file path.

Neighbours: the hooks it registers are in :mod:`gradlab.ddp`, the compressor
behind them in :mod:`gradlab.compress`, the data in :mod:`gradlab.data`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as torch_powersgd
from torch.nn.parallel import DistributedDataParallel as DDP

from gradlab.data import load_digits
from gradlab.ddp import PowerSGDState, powerSGD_hook

DEFAULTS = {"name": None, "hook": "allreduce", "rank": 1, "start": 2, "min_rate": 2.0, "lr": 0.1,
            "clip": None, "momentum": 0.9, "seed": None, "loss_scale": None, "growth": 2000,
            "scale_aware": 0, "clip_after": None}
INT_KEYS = ("rank", "start", "seed", "growth", "scale_aware")


def parse_run(text: str) -> dict:
    """``name=x,hook=gradlab,rank=4`` -> a run configuration (unknown keys are errors)."""
    cfg = dict(DEFAULTS)
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown run option {key!r}; known: {', '.join(DEFAULTS)}")
        if key in ("name", "hook"):
            cfg[key] = value
        elif key in INT_KEYS:
            cfg[key] = None if value in ("", "none") else int(value)
        else:
            cfg[key] = None if value in ("", "none") else float(value)
    if cfg["hook"] not in ("allreduce", "torch", "gradlab"):
        raise SystemExit(f"hook must be allreduce, torch or gradlab, got {cfg['hook']!r}")
    if cfg["scale_aware"] and cfg["hook"] != "gradlab":
        raise SystemExit("scale_aware=1 needs hook=gradlab (torch's hooks know nothing of the loss scale)")
    if cfg["scale_aware"] and cfg["loss_scale"] is None:
        raise SystemExit("scale_aware=1 needs loss_scale=S (there is no scale to be aware of)")
    cfg["name"] = cfg["name"] or cfg["hook"]
    return cfg


class ByteCounter:
    """Wraps ``torch.distributed.all_reduce`` to count the payload bytes."""

    def __init__(self) -> None:
        self.bytes = 0
        self.original = dist.all_reduce

    def __enter__(self) -> ByteCounter:
        def counting(tensor, *args, **kwargs):
            self.bytes += tensor.numel() * tensor.element_size()
            return self.original(tensor, *args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc) -> None:
        dist.all_reduce = self.original


def make_model(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(cfg: dict, args, data, device: torch.device) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    seed = cfg["seed"]
    model = make_model(args.hidden, seed).to(device)
    scaler = None
    if cfg["loss_scale"] is not None:
        scaler = torch.amp.GradScaler(device.type, init_scale=cfg["loss_scale"], growth_interval=cfg["growth"])
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    state = None
    if cfg["hook"] == "allreduce":
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    elif cfg["hook"] == "torch":
        state = torch_powersgd.PowerSGDState(
            process_group=None, matrix_approximation_rank=cfg["rank"], start_powerSGD_iter=cfg["start"],
            min_compression_rate=cfg["min_rate"], random_seed=seed)
        ddp.register_comm_hook(state, torch_powersgd.powerSGD_hook)
    else:
        state = PowerSGDState(
            matrix_approximation_rank=cfg["rank"], start_powerSGD_iter=cfg["start"],
            min_compression_rate=cfg["min_rate"], random_seed=seed, max_norm=cfg["clip"],
            scaler=scaler if cfg["scale_aware"] else None)
        ddp.register_comm_hook(state, powerSGD_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    x, y, x_test, y_test = data
    batches = torch.Generator().manual_seed(seed)
    local = args.batch // world
    losses, bytes_per_step, step_times, error_norms, grad_norms, scales = [], [], [], [], [], []
    with ByteCounter() as counter:
        for _ in range(args.steps):
            idx = torch.randint(0, len(x), (args.batch,), generator=batches)[rank * local:(rank + 1) * local]
            xb, yb = x[idx].to(device), y[idx].to(device)
            t0 = time.perf_counter()
            before = counter.bytes
            loss = nn.functional.cross_entropy(ddp(xb), yb)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                if cfg["clip_after"] is not None:
                    nn.utils.clip_grad_norm_(ddp.parameters(), cfg["clip_after"])
                opt.step()
            else:
                scales.append(scaler.get_scale())
                scaler.scale(loss).backward()  # the hooks run here, on scaled gradients
                scaler.unscale_(opt)
                if cfg["clip_after"] is not None:
                    nn.utils.clip_grad_norm_(ddp.parameters(), cfg["clip_after"])
                scaler.step(opt)
                scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t0)
            bytes_per_step.append(counter.bytes - before)
            if isinstance(state, PowerSGDState):
                error_norms.append(state.error_norm())
                grad_norms.append(state.grad_norm)
            # the mean loss over workers, outside the byte count
            stats = torch.tensor([loss.item(), 0.0], device=device)
            counter.original(stats)
            mean_loss = stats[0].item() / world
            losses.append(mean_loss)
            if not math.isfinite(mean_loss) or mean_loss > args.diverge_at:
                break
    with torch.no_grad():
        acc = (ddp.module(x_test.to(device)).argmax(1) == y_test.to(device)).float().mean().item()
    n_params = sum(p.numel() for p in model.parameters())
    return {"config": cfg, "losses": losses, "bytes_per_step": bytes_per_step,
            "step_time_median_s": statistics.median(step_times), "wall_s": sum(step_times),
            "error_norms": error_norms, "grad_norms": grad_norms, "loss_scales": scales, "test_accuracy": acc,
            "skipped_steps": getattr(state, "skipped_steps", 0),
            "diverged": len(losses) < args.steps,
            "params": n_params, "dense_bytes_per_step": 4 * n_params,
            "shapes": [list(p.shape) for p in model.parameters()]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", type=parse_run, default=None,
                    help="a configuration: name=..,hook=allreduce|torch|gradlab,rank=..,start=..,"
                         "min_rate=..,lr=..,clip=..,momentum=..,seed=..,loss_scale=..,growth=..,"
                         "scale_aware=0|1,clip_after=.. (repeatable)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64, help="global batch, split over the workers")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diverge-at", type=float, default=100.0, help="stop a run when the loss exceeds this")
    ap.add_argument("--backend", default="auto", help="gloo, nccl or auto (nccl when CUDA is available)")
    ap.add_argument("--out", default="-", help="JSON file written by rank 0, '-' for stdout")
    args = ap.parse_args(argv)
    runs = args.config or [parse_run("hook=allreduce")]
    # NCCL needs one GPU per process on this node
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    use_cuda = args.backend == "nccl" or (args.backend == "auto" and torch.cuda.device_count() >= local_world)
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group(backend)
    data = {}
    for cfg in runs:
        if cfg["seed"] is None:
            cfg["seed"] = args.seed
        if cfg["seed"] not in data:
            split = load_digits(seed=cfg["seed"])
            data[cfg["seed"]] = (split.x_train, split.y_train, split.x_test, split.y_test)
    t0 = time.perf_counter()
    results = [train(cfg, args, data[cfg["seed"]], device) for cfg in runs]
    record = {"world_size": dist.get_world_size(), "backend": backend, "steps": args.steps,
              "batch": args.batch, "hidden": args.hidden, "device": str(device),
              "total_s": time.perf_counter() - t0, "runs": results}
    if dist.get_rank() == 0:
        text = json.dumps(record)
        if args.out == "-":
            sys.stdout.write(text + "\n")
        else:
            with open(args.out, "w") as fh:
                fh.write(text)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
