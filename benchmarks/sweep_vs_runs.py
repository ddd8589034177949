"""8 seeds of the demo config: one vectorized `fedln-jax sweep` vs 8 separate `fedln-jax run`s.

Wall time end to end (process start, data, compilation, training, evaluation, files), measured
back to back. Also checks that both give the same final accuracies.

    PYTHONPATH=$PWD python benchmarks/sweep_vs_runs.py [--seeds 8] [--rounds 60] [--norm fn]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo protocol (fedln_jax/studies/demo.py): digits, 10 clients x 1 class, 10 local steps of 32, lr 0.01.
DEMO = ["dataset=digits", "partition=n_class", "classes_per_client=1", "num_clients=10",
        "local_steps=10", "batch_size=32", "lr=0.01", "eval_every=5"]


def cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedln_jax.cli", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--norm", default="fn")
    args = parser.parse_args()
    keys = DEMO + [f"rounds={args.rounds}", f"norm={args.norm}"]
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        sweep_s = cli("sweep", "--quiet", "--workdir", f"{tmp}/sweep", *keys,
                      "seed=" + ",".join(map(str, seeds)))
        runs_s = sum(cli("run", "--quiet", "--workdir", f"{tmp}/run{s}", *keys, f"seed={s}")
                     for s in seeds)
        diffs = []
        for s in seeds:
            with open(f"{tmp}/sweep/runs/seed={s}/summary.json") as f:
                a = json.load(f)["final_test_accuracy"]
            with open(f"{tmp}/run{s}/summary.json") as f:
                b = json.load(f)["final_test_accuracy"]
            diffs.append(abs(a - b))
    print(json.dumps({"seeds": args.seeds, "rounds": args.rounds, "norm": args.norm,
                      "sweep_seconds": round(sweep_s, 1), "separate_runs_seconds": round(runs_s, 1),
                      "speedup": round(runs_s / sweep_s, 2),
                      "max_final_accuracy_difference": max(diffs)}))


if __name__ == "__main__":
    main()
