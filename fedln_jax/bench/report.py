"""How `fedln-jax bench --protocol paper` times a configuration (JAX or PyTorch alike), its
rows as a markdown table, and their ratios to the PyTorch rows (protocol.py measures
them; docs/benchmarks.md explains the columns)."""
from __future__ import annotations

from typing import Callable

TORCH_IMPLS = ("torch_loop", "torch_func")
COLUMNS = ("conv_impl", "dtype", "R", "cohort", "chunk", "compile s", "rounds/s",
           "client steps/s", "GFLOP/s", "fraction of peak", "program MiB", "peak MiB",
           "10,000 rounds", "vs torch loop", "vs torch.func")


def time_calls(call: Callable[[int], tuple], sizes) -> tuple[list[tuple], float, int]:
    """Time `call(n)` (runs n rounds, returns (value, seconds)): a warm-up round (the first
    call runs slower), then sizes.calls calls of n rounds, n sized so that they fill about
    sizes.seconds_per_config. Without sizes.warmup (--quick, which only checks that a
    configuration runs) one call of sizes.max_rounds_per_call rounds, whose time is also the
    first round's. Returns the timed calls' results, the first round's seconds and n."""
    if not sizes.warmup:
        n = sizes.max_rounds_per_call
        results = [call(n) for _ in range(sizes.calls)]
        return results, results[0][1] / n, n
    _, first = call(1)
    n = max(2, min(sizes.max_rounds_per_call,
                   int(sizes.seconds_per_config / sizes.calls / max(first, 1e-6))))
    return [call(n) for _ in range(sizes.calls)], first, n


def is_torch(row: dict) -> bool:
    return row["conv_impl"] in TORCH_IMPLS


def add_ratios(rows: list[dict]) -> None:
    """Run-rounds/s of every JAX row over each PyTorch implementation's rounds/s at its cohort
    (the R runs of a row against R PyTorch runs one after another)."""
    torch_rate = {(r["conv_impl"], r["cohort"]): r["rounds_per_second"] for r in rows
                  if r["status"] == "ok" and is_torch(r)}
    for row in rows:
        if row["status"] != "ok" or is_torch(row):
            continue
        for impl in TORCH_IMPLS:
            rate = torch_rate.get((impl, row["cohort"]))
            row[f"ratio_to_{impl}"] = None if rate is None else row["run_rounds_per_second"] / rate


def format_seconds(seconds: float | None) -> str:
    """'42 s', '12.3 min', '4.56 h' or '3.2 d'."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per row; a skipped or failed configuration says why in its rounds/s cell."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 5 + "---:|" * (len(COLUMNS) - 5)]
    for row in rows:
        head = [row["conv_impl"], row["dtype"], str(row["runs"]), str(row["cohort"]), row["chunk"]]
        if row["status"] != "ok":
            lines.append("| " + " | ".join(head + ["-", row["status"]] + ["-"] * 8) + " |")
            continue
        cells = [_number(row["compile_seconds"]), _number(row["rounds_per_second"]),
                 _number(row["client_steps_per_second"]), _number(row["gflops_per_second"]),
                 _number(row["fraction_of_matmul_peak"], 2), _number(row["program_memory_mb"]),
                 _number(row["peak_memory_mb"]), format_seconds(row["protocol_seconds"]),
                 *(_ratio(row, impl) for impl in TORCH_IMPLS)]
        lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines)


def _ratio(row: dict, impl: str) -> str:
    value = row.get(f"ratio_to_{impl}")
    return "-" if value is None else f"{value:.2f}x"
