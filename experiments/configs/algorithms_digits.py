"""Every algorithm x {none, ln, fn} (and bn for fedavg/fedbn) x {1, 2} classes per client on
the digits; prints a Markdown table and writes table.md and results.json to the workdir.

Run (from the repository root; about 60 runs, 30 rounds each, one seed):

    python experiments/configs/algorithms_digits.py --workdir runs/algorithms_digits [--rounds 30] [--seeds 1]

`fedln-jax run --config experiments/configs/algorithms_digits.py --workdir DIR algorithm=fedyogi
norm=fn` runs a single cell (get_config is the shared protocol).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from fedln_jax.compare import compare_config, run_comparison  # noqa: E402


def get_config():
    return compare_config("fedavg", "fn", 1, seed=0, rounds=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/algorithms_digits")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    run_comparison(args.workdir, rounds=args.rounds, seeds=tuple(range(args.seeds)))
