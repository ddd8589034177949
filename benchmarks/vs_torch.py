"""fedln-jax's round side by side with the PyTorch loop a user would write, in one command.

    pip install -e '.[bench]'          # torch, for this benchmark only
    python benchmarks/vs_torch.py --clients 10 100 --repeats 3
    # issue 31's comparison: the round on PyTorch's convs against both plain loops
    python benchmarks/vs_torch.py --impls fedln_vectorized:torch,fedln_vectorized:patches,\
torch_channels_last,torch_channels_last_in_memory
    # two JAX versions side by side, both conv formulations (fedln workers run under each
    # interpreter given; torch under the one running this script):
    python benchmarks/vs_torch.py --impls fedln_vectorized:patches,fedln_vectorized:lax,torch_nchw \
        --fedln-python .venv-floor/bin/python .venv/bin/python

Implementations (each measurement in its own fresh process; the order is interleaved:
for each repeat, for each cohort size, every implementation once, so a change of machine load
hits all of them alike):

- fedln_vectorized: `fedln-jax bench --engine vectorized` (the jitted round).
- fedln_loop: `fedln-jax bench --engine loop` (one jitted call per client).
- NAME:IMPL (e.g. fedln_vectorized:lax): the same with `--conv-impl IMPL`. Each fedln
  implementation runs once under every `--fedln-python` interpreter (default: this one); its
  table row names the jax version it ran on.
- torch_nchw / torch_channels_last: the paper CNN (bias-free) in PyTorch, trained the way a
  PyTorch user does it: per client, `copy.deepcopy(global_model)`, K SGD steps on batches of B
  drawn from a fresh shuffle of its examples, then the example-weighted average of the
  clients' state dicts is loaded into the global model. channels_last converts the model and
  the batches to `torch.channels_last` memory format.
- torch_nchw_in_memory / torch_channels_last_in_memory: the same loop with every batch of the
  round sampled before the clock starts (the loop a user with the data on hand writes).
  The table gives each fedln row's ratio to the best loop of each kind.
- fedln_vectorized:torch: the round with conv_impl=torch (PyTorch's convs inside the jitted
  round, docs/install.md#torch-convs). The threads of every PyTorch call are
  torch's default (one per core) unless OMP_NUM_THREADS says otherwise.

Work per round is the same FLOP count for all (`fedln_jax.models.train_flops_per_example`:
3 x forward MACs x 2 per training example), so GFLOP/s = that / median round seconds. Each
process also measures its library's 2048^2 float32 matmul peak. The table prints the median
over repeats and the ratio to the best PyTorch loop at each cohort size.

`--worker NAME --clients N` runs one measurement and prints one JSON line (used internally).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("fedln_vectorized", "fedln_loop", "torch_nchw", "torch_channels_last",
         "torch_channels_last_in_memory")
# The plain loops: each step samples its batch (index, convert, scale) as a user's DataLoader
# would; "_in_memory": every batch of the round made before the clock starts, so the loop times
# only the training (the fastest PyTorch loop, the issue 31 yardstick).
SAMPLING_TORCH = ("torch_nchw", "torch_channels_last")
IN_MEMORY_TORCH = ("torch_nchw_in_memory", "torch_channels_last_in_memory")
TORCH_IMPLS = SAMPLING_TORCH + IN_MEMORY_TORCH
EXAMPLES_PER_CLIENT = 128          # as `fedln-jax bench`: 4 batches of 32 per client


# ----------------------------------------------------------------------------- machine facts


def cpu_facts() -> dict:
    """CPU model name and the vector extensions that matter for float32/bf16 matmuls."""
    model, flags, family = "unknown", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("cpu family", "model\t")):
                    family.setdefault(line.split(":")[0].strip(), line.split(":", 1)[1].strip())
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f in ("avx", "avx2", "fma", "f16c", "amx_bf16", "amx_tile")
                    or f.startswith("avx512") or f.startswith("avx_vnni"))
    if family:
        model += f" (family {family.get('cpu family', '?')}, model {family.get('model', '?')})"
    return {"cpu_model": model, "cpu_vector_flags": wanted, "cpus": os.cpu_count()}


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- PyTorch side


def torch_paper_cnn():
    """The paper CNN without biases: conv5x5(64)-relu-pool, conv5x5(64)-relu-pool,
    dense 384, 192, head 10 (the same layers and sizes as fedln's `cnn`)."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 384, bias=False), nn.ReLU(),
        nn.Linear(384, 192, bias=False), nn.ReLU(), nn.Linear(192, 10, bias=False))


def torch_matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def torch_worker(clients: int, local_steps: int, batch_size: int, rounds: int,
                 channels_last: bool, in_memory: bool = False) -> dict:
    import copy

    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # Same data as fedln's bench: uint8 images, scaled to [0, 1] on use.
    gen = torch.Generator().manual_seed(0)
    x_u8 = torch.randint(0, 256, (clients, EXAMPLES_PER_CLIENT, 3, 32, 32), dtype=torch.uint8,
                         generator=gen)
    y = torch.randint(0, 10, (clients, EXAMPLES_PER_CLIENT), generator=gen)
    global_model = torch_paper_cnn().to(memory_format=memory_format)

    def client_batches(c):
        # Fresh shuffles, full batches, as many epochs as the K steps need.
        order = torch.cat([torch.randperm(EXAMPLES_PER_CLIENT, generator=gen)
                           for _ in range(-(-local_steps * batch_size // EXAMPLES_PER_CLIENT))])
        for s in range(local_steps):
            ix = order[s * batch_size:(s + 1) * batch_size]
            xb = (x_u8[c, ix].float() / 255).contiguous(memory_format=memory_format)
            yield xb, y[c, ix]

    def one_round(batches=None):
        total = clients * EXAMPLES_PER_CLIENT
        avg = None
        last_loss = 0.0
        for c in range(clients):
            model = copy.deepcopy(global_model)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            for xb, yb in (batches[c] if batches else client_batches(c)):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                last_loss = float(loss.detach())
            weight = EXAMPLES_PER_CLIENT / total
            sd = model.state_dict()
            with torch.no_grad():
                if avg is None:
                    avg = {k: v * weight for k, v in sd.items()}
                else:
                    for k, v in sd.items():
                        avg[k].add_(v, alpha=weight)
        global_model.load_state_dict(avg)
        return last_loss

    one_round()                               # warm-up
    times = []
    for _ in range(rounds):
        batches = [list(client_batches(c)) for c in range(clients)] if in_memory else None
        start = time.perf_counter()
        loss = one_round(batches)
        times.append(time.perf_counter() - start)
    return {"round_seconds_median": statistics.median(times), "train_loss": loss,
            "matmul_peak_gflops": torch_matmul_peak(), "library": f"torch {torch.__version__}",
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- one measurement


def fedln_options(extra: list[str]) -> dict:
    """`--fedln-args` as run_bench keyword arguments (the `fedln-jax bench` option names)."""
    parser = argparse.ArgumentParser(prog="--fedln-args")
    parser.add_argument("--conv-impl", default="auto")
    parser.add_argument("--chunk-size", type=int, default=0)
    parser.add_argument("--chunk-policy", default="auto")
    parser.add_argument("--dtype", default="float32")
    return vars(parser.parse_args(extra))


def worker(name: str, clients: int, local_steps: int, batch_size: int, rounds: int,
           extra: list[str]) -> dict:
    sys.path.insert(0, ROOT)
    base, _, conv_impl = name.partition(":")
    if conv_impl:
        extra = [*extra, "--conv-impl", conv_impl]
    from fedln_jax.models import train_flops_per_example
    flops = clients * local_steps * batch_size * train_flops_per_example("cnn", (32, 32, 3), 10)
    if name in TORCH_IMPLS:
        record = torch_worker(clients, local_steps, batch_size, rounds,
                              channels_last=name.startswith("torch_channels_last"),
                              in_memory=name in IN_MEMORY_TORCH)
    else:
        from fedln_jax.bench.speed import run_bench
        engine = base.split("_", 1)[1]
        out = run_bench(model="cnn", clients=clients, local_steps=local_steps,
                        batch_size=batch_size, rounds=rounds, engine_name=engine,
                        **fedln_options(extra))
        import jax
        record = {"round_seconds_median": out["round_seconds_median"],
                  "train_loss": out["train_loss"], "matmul_peak_gflops": out["matmul_peak_gflops"],
                  "library": f"jax {jax.__version__}", "conv_impl": out.get("conv_impl")}
    record.update(impl=name, clients=clients, gflops_per_second=flops / record["round_seconds_median"] / 1e9)
    return record


def run_worker(name, clients, args, python=sys.executable) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", name, "--clients", str(clients),
           "--local-steps", str(args.local_steps), "--batch-size", str(args.batch_size),
           "--rounds", str(args.rounds), *(["--fedln-args", args.fedln_args] if args.fedln_args else [])]
    load = load_average()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             filter(None, [ROOT, os.environ.get("PYTHONPATH")]))})
    if out.returncode != 0:
        raise SystemExit(f"{name} at {clients} clients failed:\n{out.stderr[-2000:]}")
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["load_average_before"] = load
    record["row"] = name if name in TORCH_IMPLS else f"{name} ({record['library']})"
    return record


def table(records: list[dict], clients_list: list[int]) -> str:
    """GFLOP/s per implementation and cohort, and its ratio to the best PyTorch loop of each
    kind that ran (sampling its batches; batches already in memory)."""
    def median_of(name, clients, key):
        values = [r[key] for r in records if r["row"] == name and r["clients"] == clients]
        return statistics.median(values) if values else float("nan"), values

    def best(names, c):
        rates = [m for t in names if (m := median_of(t, c, "gflops_per_second")[0]) > 0]
        return max(rates) if rates else float("nan")

    kinds = [(label, names) for label, names in (("sampling torch", SAMPLING_TORCH),
                                                 ("in-memory torch", IN_MEMORY_TORCH))
             if any(r["row"] in names for r in records)]
    ratio_heads = "".join(f" | ratio to best {label}" for label, _ in kinds)
    header = "| implementation | " + " | ".join(f"{c} clients: GFLOP/s (runs){ratio_heads}"
                                              for c in clients_list) + " |"
    lines = [header, "|---|" + ("---|" * (1 + len(kinds))) * len(clients_list)]
    for name in dict.fromkeys(r["row"] for r in records):   # rows in order of first run
        cells = []
        for c in clients_list:
            med, values = median_of(name, c, "gflops_per_second")
            runs = ", ".join(f"{v:.0f}" for v in values)
            cells.append(f"{med:.1f} ({runs})" + "".join(f" | {med / best(names, c):.2f}x"
                                                         for _, names in kinds))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per process (median)")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--fedln-args", default="",
                        help="extra `fedln-jax bench` options for the fedln workers, e.g. "
                             "'--conv-impl patches --chunk-size 1'")
    parser.add_argument("--fedln-python", nargs="+", default=[sys.executable], metavar="PYTHON",
                        help="interpreters (e.g. venvs with different jax versions) that run "
                             "each fedln implementation; torch runs under this one")
    parser.add_argument("--out", help="append every record to this JSONL file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        record = worker(args.worker, args.clients[0], args.local_steps, args.batch_size,
                        args.rounds, args.fedln_args.split())
        print(json.dumps(record))
        return
    impls = args.impls.split(",")
    facts = cpu_facts()
    print(f"CPU: {facts['cpu_model']} ({facts['cpus']} CPUs), vector extensions: "
          f"{' '.join(facts['cpu_vector_flags'])}", flush=True)
    records = []
    for repeat in range(args.repeats):
        for clients in args.clients:
            runs = [(name, python) for name in impls for python in
                    ([sys.executable] if name in TORCH_IMPLS else args.fedln_python)]
            for name, python in runs:
                record = run_worker(name, clients, args, python)
                record["repeat"] = repeat
                records.append(record)
                print(f"  repeat {repeat} {record['row']:36s} {clients:4d} clients: "
                      f"{record['gflops_per_second']:6.1f} GFLOP/s, round "
                      f"{record['round_seconds_median']:.2f} s, matmul peak "
                      f"{record['matmul_peak_gflops']:.0f} GFLOP/s, load {record['load_average_before']}",
                      flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({**record, **facts}) + "\n")
    print()
    print(table(records, args.clients))
    for lib_name in dict.fromkeys(r["library"] for r in records):
        peaks = [r["matmul_peak_gflops"] for r in records if r["library"] == lib_name]
        if peaks:
            print(f"2048^2 float32 matmul peak, {lib_name}: median {statistics.median(peaks):.0f} "
                  f"GFLOP/s (min {min(peaks):.0f}, max {max(peaks):.0f}, {len(peaks)} processes)")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
