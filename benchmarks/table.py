"""Run `fedln-jax bench` over the BENCHMARKS.md grid and print the markdown table.

    PYTHONPATH=. python benchmarks/table.py --out benchmarks/results.jsonl

Each configuration runs in a fresh process (so peak_rss_mb is its own); the engines of one
configuration run back to back, so their ratio is measured under the same machine load.
Extra arguments after `--` are passed to every bench call (e.g. `-- --rounds 5`).
"""
import argparse
import json
import subprocess
import sys

GRID = [(model, clients) for model in ("cnn", "small_cnn") for clients in (10, 100)]
ENGINES = ("vectorized", "loop")


def run_one(model, clients, engine, extra):
    cmd = [sys.executable, "-m", "fedln_jax.cli", "bench", "--model", model, "--clients",
           str(clients), "--local-steps", "5", "--batch-size", "32", "--engine", engine, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(records):
    lines = ["| model | clients | engine | GFLOP/s | matmul peak GFLOP/s | fraction of peak "
             "| client steps/s | round s (median) | compile s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['clients']} | {r['engine']} | {r['gflops_per_second']:.1f} "
                     f"| {r['matmul_peak_gflops']:.0f} | {r['fraction_of_matmul_peak']:.2f} "
                     f"| {r['client_steps_per_second']:.1f} | {r['round_seconds_median']:.3f} "
                     f"| {r['compile_seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results.jsonl")
    parser.add_argument("--models", default="cnn,small_cnn")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    records = []
    with open(args.out, "a") as f:
        for model, clients in GRID:
            if model not in args.models.split(","):
                continue
            for engine in ENGINES:
                record = run_one(model, clients, engine, args.extra)
                records.append(record)
                f.write(json.dumps(record) + "\n")
                f.flush()
                print(markdown(records[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown(records))


if __name__ == "__main__":
    main()
