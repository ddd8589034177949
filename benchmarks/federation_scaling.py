"""Round time and memory as the federation grows with the cohort fixed (FedAvg and SCAFFOLD).

    python benchmarks/federation_scaling.py --num-clients 100 10000 100000 --algorithms fedavg scaffold

Tiny clients (8 synthetic 8x8x1 uint8 images each, the digits CNN), a cohort of 100 clients
per round, 2 local steps of batch 8. Each point runs in a fresh process so its memory figures
are its own. Reported per point:

- data_mib: the images, labels and index tables the engine holds (`DeviceData`);
- client_state_mib: the per-client algorithm state (FedAvg: none; SCAFFOLD: one control
  variate, the size of the model, per client);
- rss_*_mib: resident memory after start-up (imports, jax initialised), after the data are
  on the device, after the initial state, and the process peak (`ru_maxrss`) after the
  timed rounds;
- growth_over_needed_mib: peak minus start-up minus (data + client state), i.e. what the
  process holds beyond what the algorithm needs; this should not grow with num_clients;
- round_s: mean wall time of `--rounds` rounds run in one jitted call, after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_PER_CLIENT = 8
COHORT = 100


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_mib(tree) -> float:
    import jax
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2 ** 20


def measure(num_clients: int, algorithm_name: str, rounds: int) -> dict:
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from fedln_jax.engine.client import make_apply_fn
    from fedln_jax.engine.placement import client_mesh
    from fedln_jax.engine.round import make_multi_round_fn, make_round_fn
    from round_timing import time_rounds
    from fedln_jax.engine.state import RoundSpec, init_state, make_data
    from fedln_jax.algorithms import get_algorithm
    from fedln_jax.models import build_model

    jnp.zeros(1).block_until_ready()
    rss_start = current_rss_mib()
    n = num_clients * EXAMPLES_PER_CLIENT
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.int32)
    blocks = list(np.arange(n, dtype=np.int32).reshape(num_clients, EXAMPLES_PER_CLIENT))
    start = time.perf_counter()
    data = make_data(x, y, blocks, num_classes=10)
    del x, y, blocks                                    # the engine's copy is the one kept
    data_seconds = time.perf_counter() - start
    rss_data = current_rss_mib()

    algorithm = get_algorithm(algorithm_name)
    net = build_model("small_cnn", "none", 10)
    hparams = {"lr": jnp.float32(0.05), "server_lr": jnp.float32(1.0)}
    state = init_state(net, jnp.zeros((1, 8, 8, 1)), 0, algorithm, hparams=hparams,
                              num_clients=num_clients)
    rss_state = current_rss_mib()
    spec = RoundSpec(num_clients=num_clients, cohort_size=COHORT, local_steps=2,
                            batch_size=8, max_epochs=2, pixel_scale=1 / 255, chunk_size=1,
                            momentum=0.0, weight_decay=0.0)
    mesh = client_mesh()
    run_rounds = jax.jit(make_multi_round_fn(
        make_round_fn(make_apply_fn(net), spec, algorithm, mesh)), donate_argnums=0)
    state, loss, first, round_s = time_rounds(run_rounds, state, hparams, data, rounds)
    data_mib, state_mib = tree_mib(data), tree_mib(state.client_states)
    peak = peak_rss_mib()
    return {"algorithm": algorithm_name, "num_clients": num_clients, "cohort": COHORT,
            "data_mib": round(data_mib, 1), "client_state_mib": round(state_mib, 1),
            "rss_start_mib": round(rss_start), "rss_after_data_mib": round(rss_data),
            "rss_after_state_mib": round(rss_state), "peak_rss_mib": round(peak),
            "growth_over_needed_mib": round(peak - rss_start - data_mib - state_mib),
            "make_data_s": round(data_seconds, 2), "compile_plus_first_round_s": round(first, 2),
            "round_s": round(round_s, 3), "train_loss": round(float(loss), 4)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-clients", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--algorithms", nargs="+", default=["fedavg", "scaffold"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        algorithm, clients = args.point.split(":")
        print(json.dumps(measure(int(clients), algorithm, args.rounds)))
        return
    rows = []
    for algorithm in args.algorithms:
        for clients in args.num_clients:
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--point",
                                  f"{algorithm}:{clients}", "--rounds", str(args.rounds)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{algorithm} {clients}: failed\n{out.stderr[-1500:]}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["load_average"] = load
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = ["algorithm", "num_clients", "data_mib", "client_state_mib", "rss_start_mib",
            "rss_after_data_mib", "rss_after_state_mib", "peak_rss_mib", "growth_over_needed_mib",
            "make_data_s", "round_s", "load_average"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
