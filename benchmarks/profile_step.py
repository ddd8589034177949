"""Where the time of one training step of the paper CNN goes, per op, in JAX (XLA:CPU) and PyTorch.

    python benchmarks/profile_step.py --lib jax   [--conv-impl patches] [--steps 10] [--scanned 5]
    python benchmarks/profile_step.py --lib torch [--channels-last]
    python benchmarks/profile_step.py --lib both [--conv-impl torch]   # the passes side by side

One client, batch 32 (the bench's shapes), forward + backward + SGD update, jitted (JAX) or
eager (PyTorch). JAX: a `jax.profiler` trace of `--steps` steps, read back with
`jax.profiler.ProfileData`; the host thread events XLA:CPU emits per executed op (thunk) are
summed by name. PyTorch: `torch.profiler` with its per-operator self CPU time. Both print the
top ops as a table, times per step in milliseconds, and the share of the step.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32


def jax_profile(steps: int, conv_impl: str, top: int, scanned: int = 0) -> None:
    """Per-op profile of one training step; with scanned = S > 0, of S local steps in a
    `lax.scan` under a width-1 `vmap`, as the round runs them (times per step)."""
    sys.path.insert(0, ROOT)
    import glob

    import jax
    import jax.numpy as jnp
    import optax
    from fedln_jax.engine.client import make_apply_fn
    from fedln_jax.models import build_model

    net = build_model("cnn", "none", 10, conv_impl=conv_impl)
    apply_fn = make_apply_fn(net)
    params = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    local_steps = max(scanned, 1)
    x = jax.random.uniform(jax.random.key(1), (1, local_steps, BATCH, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (1, local_steps, BATCH), 0, 10)

    def sgd_step(p, batch):
        def loss_fn(p):
            logits, _ = apply_fn(p, {}, batch[0], True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
        grads = jax.grad(loss_fn)(p)
        return jax.tree.map(lambda a, g: a - 0.01 * g, p, grads), None

    if scanned:
        client = lambda p, xs, ys: jax.lax.scan(sgd_step, p, (xs, ys))[0]
        step = jax.jit(lambda p: jax.tree.map(lambda a: a[0], jax.vmap(
            client, in_axes=(None, 0, 0))(p, x, y)))
    else:
        step = jax.jit(lambda p: sgd_step(p, (x[0, 0], y[0, 0]))[0])

    params = step(params)
    jax.block_until_ready(params)
    wall = []
    for _ in range(steps):
        start = time.perf_counter()
        params = jax.block_until_ready(step(params))
        wall.append(time.perf_counter() - start)
    out_dir = tempfile.mkdtemp(prefix="fedln_profile_")
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0    # traced Python would slow conv_impl=torch's callbacks
    with jax.profiler.trace(out_dir, profiler_options=options):
        for _ in range(steps):
            params = jax.block_until_ready(step(params))
    path = glob.glob(os.path.join(out_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    # Per-op thunk events of XLA:CPU carry the HLO op name; the executable-level events
    # (the whole step) are recognised by their length and left out of the sum.
    totals = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                name = event.name
                # Python-tracer frames ($file:line), the thread pool's waits, the
                # executable-level events (the whole step) and the scan's while loop are
                # not ops.
                if name.startswith(("$", "jit_", "PjitFunction", "PjRt", "CommonPjRt", "Thunk",
                                    "TfrtCpu", "SlinkyThreadPool", "while")):
                    continue
                totals[name] += event.duration_ns
    per_step = steps * local_steps
    step_ms = statistics.median(wall) / local_steps * 1e3
    what = (f"{scanned} local steps scanned under a width-1 vmap" if scanned else "one step")
    print(f"jax {jax.__version__}, conv_impl={conv_impl}, {what}: {step_ms:.1f} ms per step "
          f"(median of {steps} calls, outside the trace); {steps} calls traced")
    hlo = step.lower(params).compile().as_text()
    described = describe_hlo_ops(hlo)
    print("| op (HLO name) | what it computes (output shape; fused ops) | ms per step | share of step |")
    print("|---|---|---|---|")
    for name, ns in totals.most_common(top):
        print(f"| {name} | {described.get(name, '')} | {ns / per_step / 1e6:.2f} "
              f"| {ns / per_step / 1e6 / step_ms:.0%} |")
    categories = collections.Counter()
    for name, ns in totals.items():
        categories[op_category(described.get(name, ""))] += ns / per_step / 1e6
    for cat, ms in categories.most_common():
        print(f"| **{cat}** | (sum) | {ms:.2f} | {ms / step_ms:.0%} |")
    print(f"| all ops | | {sum(totals.values()) / per_step / 1e6:.2f} "
          f"| {sum(totals.values()) / per_step / 1e6 / step_ms:.0%} |")
    if "--hlo" in sys.argv:
        print(hlo)
    return step_ms, dict(categories)


CONV_FORWARD, CONV_BACKWARD = "conv forward", "conv backward (input + kernel gradients)"
MATMUL, IM2COL = "matmul (dense layers; patches' conv GEMMs)", "im2col and its gradient"
RELU_POOL, SGD, OTHER = "ReLU, max-pool and their gradients", "SGD update", "other ops"
PASSES = (CONV_FORWARD, CONV_BACKWARD, IM2COL, MATMUL, RELU_POOL, SGD, OTHER)


def op_category(description: str) -> str:
    """The pass of an XLA op from its description (output shape; opcode: fused opcodes). A
    fusion counts under its main opcode (a pool gradient fused with a dot counts as matmul)."""
    kinds = description.partition(";")[2]
    if "custom-call" in kinds:    # conv_impl=torch: forward (x, kernel), backward (x, kernel, g)
        return CONV_BACKWARD if "3 operands" in kinds else CONV_FORWARD
    if "convolution" in kinds:
        return CONV_FORWARD
    if "dot" in kinds:
        return MATMUL
    if "concatenate" in kinds or "slice" in kinds or "pad" in kinds:
        return IM2COL
    if "maximum" in kinds or "select" in kinds or "compare" in kinds or "divide" in kinds:
        return RELU_POOL
    if "subtract" in kinds:
        return SGD
    return OTHER


TORCH_PASSES = (    # aten op name (prefix) -> pass
    ("aten::mkldnn_convolution", CONV_FORWARD), ("aten::convolution_backward", CONV_BACKWARD),
    ("aten::threshold_backward", RELU_POOL), ("aten::clamp_min", RELU_POOL),
    ("aten::max_pool2d", RELU_POOL), ("aten::mm", MATMUL), ("aten::addmm", MATMUL),
    ("Optimizer.", SGD), ("aten::add_", SGD), ("aten::fill_", SGD),
)


def torch_category(op: str) -> str:
    return next((cat for prefix, cat in TORCH_PASSES if op.startswith(prefix)), OTHER)


def describe_hlo_ops(hlo: str) -> dict:
    """{instruction name: 'shape; opcodes of its fused computation'} from optimized HLO text."""
    import re
    computations, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            computations[current] = []
            continue
        op = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\([^)]*\)|\S+) (\w[\w\-]*)\(", line)
        if op and current:
            computations[current].append((op.group(1), op.group(2), op.group(3), line))
    out = {}
    for ops in computations.values():
        for name, shape, opcode, line in ops:
            called = re.search(r"calls=%?([\w.\-]+)", line)
            kinds = ""
            if called and called.group(1) in computations:
                inner = [o[2] for o in computations[called.group(1)]
                         if o[2] not in ("parameter", "constant", "bitcast", "broadcast")]
                kinds = ", ".join(dict.fromkeys(inner))
            if opcode == "custom-call":
                kinds = f"{line.split('custom-call(')[1].split(')')[0].count('%')} operands"
            out[name] = f"{shape}; {opcode}" + (f": {kinds}" if kinds else "")
    return out


def torch_profile(steps: int, channels_last: bool, top: int) -> None:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile
    from vs_torch import torch_paper_cnn

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_paper_cnn().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(BATCH, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    wall = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        wall.append(time.perf_counter() - start)
    step_ms = statistics.median(wall) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"torch {torch.__version__}, {'channels_last' if channels_last else 'NCHW'}: step "
          f"{step_ms:.1f} ms (median of {steps}, outside the profiler); {steps} steps profiled, "
          f"{torch.get_num_threads()} threads")
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    print("| op | ms per step (self CPU) | share of step |")
    print("|---|---|---|")
    for e in rows[:top]:
        ms = e.self_cpu_time_total / steps / 1e3
        print(f"| {e.key} | {ms:.2f} | {ms / step_ms:.0%} |")
    categories = collections.Counter()
    for e in rows:
        categories[torch_category(e.key)] += e.self_cpu_time_total / steps / 1e3
    return step_ms, dict(categories)


def compare(args) -> None:
    """Each library in its own process (as a user runs it), then the passes side by side."""
    import json
    import subprocess
    runs = {}
    for label, extra in ((f"jax, conv_impl={args.conv_impl}", ["--lib", "jax", "--conv-impl",
                          args.conv_impl, "--scanned", str(args.scanned or 5)]),
                         ("torch, channels_last", ["--lib", "torch", "--channels-last"])):
        out = subprocess.run([sys.executable, __file__, *extra, "--steps", str(args.steps),
                              "--json"], capture_output=True, text=True, check=True).stdout
        print(out)
        runs[label] = json.loads(out.strip().splitlines()[-1])
    (ja, jax_run), (ta, torch_run) = runs.items()
    print(f"| pass | {ja}: ms per step | {ta}: ms per step | ratio |")
    print("|---|---|---|---|")
    for cat in PASSES:
        j, t = jax_run["passes"].get(cat, 0.0), torch_run["passes"].get(cat, 0.0)
        print(f"| {cat} | {j:.2f} | {t:.2f} | " + (f"{j / t:.2f}x |" if t else "- |"))
    j_ops, t_ops = (sum(r["passes"].values()) for r in (jax_run, torch_run))
    print(f"| sum of ops (JAX: over XLA's threads) | {j_ops:.2f} | {t_ops:.2f} | {j_ops / t_ops:.2f}x |")
    print(f"| **step (wall)** | **{jax_run['step_ms']:.2f}** | **{torch_run['step_ms']:.2f}** "
          f"| **{jax_run['step_ms'] / torch_run['step_ms']:.2f}x** |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=("jax", "torch", "both"), required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--conv-impl", default="patches")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--hlo", action="store_true", help="also print the optimized HLO (jax)")
    parser.add_argument("--scanned", type=int, default=0, metavar="S",
                        help="jax: profile S local steps in a lax.scan under a width-1 vmap, "
                             "as the round runs them (default: one unscanned step)")
    parser.add_argument("--json", action="store_true",
                        help="end with one JSON line: the step and its passes (for --lib both)")
    args = parser.parse_args()
    if args.lib == "both":
        return compare(args)
    if args.lib == "jax":
        step_ms, passes = jax_profile(args.steps, args.conv_impl, args.top, args.scanned)
    else:
        step_ms, passes = torch_profile(args.steps, args.channels_last, args.top)
    if args.json:
        import json
        print(json.dumps({"step_ms": step_ms, "passes": passes}))


if __name__ == "__main__":
    main()
