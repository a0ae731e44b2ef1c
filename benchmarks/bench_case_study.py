"""The case study's experiment (chapter 7) at full size: blow-up and fixes over many seeds.

For a character-level LSTM (and, on a GPU, a small transformer) trained with
Adam at lr 0.1, each cumulative fix of `gradlab.lm.fix_stages` is trained from
several seeds; one row per configuration (`gradlab.lm.summarize`) plus the time
per training step goes to results/<device>/case_study.json. Sizes: on a GPU 8
seeds x 1,000 steps and the transformer; on the CPU the chapter's default
(3 seeds x 80 steps, LSTM only); --quick 2 seeds x 20 steps. --seeds, --steps and
--hidden override the mode's sizes (the smoke test runs a tiny model).

    python benchmarks/bench_case_study.py [--device auto|cpu|cuda] [--quick]
        [--seeds N] [--steps N] [--hidden N]
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cli, write_results  # noqa: E402

from gradlab import lm  # noqa: E402
from gradlab.data import load_text  # noqa: E402


def _sizes(ap) -> None:
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: the mode's)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: the mode's)")
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of the models (default 256)")


def main(argv: list[str] | None = None) -> Path:
    args, device = cli(__doc__, argv, extra=_sizes)
    gpu = device.type == "cuda"
    steps, seeds = (20, 2) if args.quick else (1_000, 8) if gpu else (80, 3)
    steps, seeds = args.steps or steps, args.seeds or seeds
    train, val, vocab = lm.char_splits(load_text())
    models = ["lstm", "transformer"] if gpu and not args.quick else ["lstm"]
    cases, bases = [], {}
    for model in models:
        base = lm.TrainConfig(model=model, hidden_size=args.hidden, num_layers=1 if model == "lstm" else 2,
                              lr=0.1, steps=steps, batch_size=16, seq_len=64,
                              eval_every=max(1, steps // 5))
        bases[model] = asdict(base)
        for stage, config in lm.fix_stages(base).items():
            records = []
            for seed in range(seeds):
                _, rec = lm.train_char_lm(replace(config, seed=seed), train, val, len(vocab), device=device)
                records.append(rec)
            row = lm.summarize(records)
            row = {"model": model, "stage": stage, **{k.replace(" ", "_").replace("|", ""): v
                                                     for k, v in row.items()}}
            row["ms_per_step"] = 1e3 * sum(r.seconds for r in records) / sum(len(r.loss) for r in records)
            cases.append(row)
            print(row, flush=True)
    out = write_results("case_study-quick" if args.quick else "case_study", device, cases, quick=args.quick,
                        steps=steps, seeds=seeds, hidden=args.hidden, lr=0.1,
                        bare_recipe=bases)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
