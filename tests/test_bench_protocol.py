"""`fedln-jax bench --protocol paper`: the grid, its rows, the table, the GPU script, bad input.

Two configurations at --quick's tiny size cover every code path of the grid between them
(lax and patches, float32 and bfloat16, one run and a runs axis, the whole cohort in one vmap
and one client at a time); the whole grid at --quick's size is one command
(docs/benchmarks.md), too slow for the suite on a loaded 2-core CPU.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from fedln_jax.bench import protocol, torch_loop
from fedln_jax.bench.grid import FULL, QUICK, Point, build_grid, protocol_floors
from fedln_jax.bench.protocol import skip_reason
from fedln_jax.bench.report import add_ratios, format_seconds, markdown_table, time_calls
from fedln_jax.cli import main
from fedln_jax.models import train_flops_per_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_FLOPS = train_flops_per_example("cnn", (16, 16, 3), 10, "4/4", "8/8") * QUICK.batch_size
POSITIVE = ("rounds_per_second", "client_steps_per_second", "gflops_per_second",
            "fraction_of_matmul_peak", "peak_memory_mb", "protocol_seconds",
            "matmul_peak_gflops", "round_seconds_median", "first_round_seconds")


def check_row(row: dict) -> None:
    assert row["status"] == "ok", row["status"]
    for key in POSITIVE:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    steps = row["runs"] * row["cohort"] * QUICK.local_steps
    assert math.isclose(row["client_steps_per_second"], steps * row["rounds_per_second"])
    assert math.isclose(row["gflops_per_second"], steps * QUICK_FLOPS * row["rounds_per_second"] / 1e9)
    assert math.isclose(row["fraction_of_matmul_peak"],
                        row["gflops_per_second"] / row["matmul_peak_gflops"])
    assert math.isfinite(row["train_loss"]) and row["size"] == "quick"
    assert row["backend"] and row["jax_version"] and row["cpu_model"]
    if row["conv_impl"] in torch_loop.IMPLS:
        assert row["compile_seconds"] is None
        assert math.isclose(row["protocol_seconds"], 10_000 / row["rounds_per_second"])
    else:
        assert row["compile_seconds"] > 0 and row["program_memory_mb"] > 0
        assert math.isclose(row["protocol_seconds"],
                            10_000 / row["rounds_per_second"] + row["compile_seconds"])


def test_gpu_script_runs_a_quick_configuration(tmp_path):
    """benchmarks/gpu_protocol.sh (install skipped) writes its rows and table under OUT; with
    torch installed, the PyTorch rows and the ratios to them are there too."""
    # PYTHONPATH kept behind ROOT: a torch found through it is what torch_loop.available() saw
    env = {**os.environ, "OUT": str(tmp_path), "SKIP_INSTALL": "1", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_protocol.sh"), "--quick",
                           "--conv-impl", "lax", "--dtype", "float32", "--runs", "1",
                           "--cohort", "3", "--chunk-policy", "cohort"],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "protocol.jsonl").read_text().splitlines()]
    impls = [row["conv_impl"] for row in rows]
    torch_rows = list(torch_loop.IMPLS) if torch_loop.available() else []
    assert impls == torch_rows + ["lax"]
    for row in rows:
        check_row(row)
    if torch_rows:
        lax = rows[-1]
        for impl, torch_row in zip(torch_rows, rows):
            assert math.isclose(lax[f"ratio_to_{impl}"],
                                lax["rounds_per_second"] / torch_row["rounds_per_second"])
    table = (tmp_path / "protocol.md").read_text().strip().splitlines()
    assert len(table) == 2 + len(rows) and "| lax | float32 | 1 | 3 | cohort |" in table[-1]


def test_quick_patches_bfloat16_runs_axis_narrow(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["bench", "--protocol", "paper", "--quick", "--no-torch", "--conv-impl", "patches",
                 "--dtype", "bfloat16", "--runs", "2", "--cohort", "3", "--chunk-policy", "narrow",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    check_row(row)
    assert (row["conv_impl"], row["dtype"], row["runs"], row["chunk_size"]) == ("patches", "bfloat16", 2, 1)
    assert row["ratio_to_torch_loop"] is None and row["run_rounds_per_second"] == 2 * row["rounds_per_second"]
    assert json.loads(captured.out.splitlines()[0]) == row      # stdout: the rows, then the table
    assert "| patches | bfloat16 | 2 | 3 | narrow |" in captured.out
    assert "patches" in captured.err                            # progress on stderr


def test_grid_puts_the_important_configurations_first():
    grid = build_grid("lax,patches", "float32,bfloat16", "1,8", "10,100", "cohort,narrow")
    assert len(grid) == 32
    assert grid[:2] == [Point("lax", "float32", 1, 10, "cohort"), Point("patches", "float32", 1, 10, "cohort")]
    assert grid[4] == Point("lax", "bfloat16", 1, 10, "cohort")
    assert [p.cohort for p in grid] == [10] * 16 + [100] * 16
    assert [p.runs for p in grid[:16]] == [1] * 8 + [8] * 8


def test_skip_reasons():
    ok = {"status": "ok", "conv_impl": "lax", "client_steps_per_second": 100.0}
    point = Point("lax", "float32", 8, 100, "cohort")
    assert skip_reason(point, [], 0.0, None, 10.0, QUICK) is None        # nothing measured yet
    assert skip_reason(point, [ok], 5.0, 5.0, None, QUICK).startswith("skipped: the budget")
    # --quick: 8 runs x 100 clients x 2 steps = 1600 steps in its one round, at 100 steps/s 16 s
    assert "about 16 s" in skip_reason(point, [ok], 0.0, None, 10.0, QUICK)
    assert skip_reason(point, [ok], 0.0, None, 20.0, QUICK) is None
    # full size: 8 x 100 x 10 steps a round; a warm-up round and 3 calls of 2 rounds: 560 s
    assert "about 560 s" in skip_reason(point, [ok], 0.0, None, 500.0, FULL)
    assert skip_reason(point, [ok], 0.0, None, 600.0, FULL) is None


def test_time_calls_warms_up_then_fills_the_time_per_configuration():
    calls = []

    def call(n):                  # every round takes 0.25 s, the first call's round 1 s
        calls.append(n)
        return f"value {len(calls)}", (1.0 if len(calls) == 1 else 0.25 * n)

    # FULL: 10 s over 3 calls at the first round's 1 s: 3 rounds a call (at least 2)
    results, first, n = time_calls(call, FULL)
    assert (calls, first, n) == ([1, 3, 3, 3], 1.0, 3)
    assert results == [("value 2", 0.75), ("value 3", 0.75), ("value 4", 0.75)]
    calls.clear()                 # --quick: no warm-up, one call of one round
    assert time_calls(call, QUICK) == ([("value 1", 1.0)], 1.0, 1) and calls == [1]


def test_a_configuration_that_cannot_fit_is_skipped_and_a_grid_that_cannot_is_refused(
        tmp_path, capsys, monkeypatch):
    one, two = Point("lax", "float32", 1, 3, "cohort"), Point("lax", "float32", 2, 3, "cohort")
    floors = protocol_floors([one, two], QUICK)
    assert floors[one].data == 3 * 4 * (16 * 16 * 3 + 8)      # 3 clients x 4 images, + labels
    assert floors[two].state == floors[one].state and floors[two].chunk == floors[one].chunk == 3
    assert floors[two].runs == 2 and floors[two].total - floors[two].data == 2 * (
        floors[one].total - floors[one].data)
    out = tmp_path / "rows.jsonl"
    args = ["bench", "--protocol", "paper", "--quick", "--no-torch", "--conv-impl", "lax",
            "--dtype", "float32", "--runs", "1,2", "--cohort", "3", "--chunk-policy", "cohort",
            "--out", str(out)]
    capacity = floors[one].total
    monkeypatch.setattr(protocol, "device_capacity", lambda: (capacity, "a faked device"))
    assert main(args) == 0
    ok, skipped = [json.loads(line) for line in out.read_text().splitlines()]
    check_row(ok)
    assert skipped["runs"] == 2 and skipped["status"].startswith("skipped: needs at least")
    capacity -= 1                                             # now not even R = 1 fits
    out.unlink(), (tmp_path / "rows.md").unlink()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no configuration of the grid fits") and err.count("\n") == 1
    # nothing written; the first command's lock file stays (as a workdir's .fedln.lock)
    assert [p.name for p in tmp_path.iterdir()] == [".rows.jsonl.lock"]


def test_table_ratios_and_a_skipped_row():
    base = {"dtype": "float32", "runs": 1, "cohort": 10, "chunk": "-", "status": "ok",
            "compile_seconds": None, "client_steps_per_second": 1.0, "gflops_per_second": 1.0,
            "fraction_of_matmul_peak": 0.5, "program_memory_mb": None, "peak_memory_mb": 9.0,
            "protocol_seconds": 4000.0}
    rows = [{**base, "conv_impl": "torch_loop", "rounds_per_second": 2.0},
            {**base, "conv_impl": "torch_func", "rounds_per_second": 4.0},
            {**base, "conv_impl": "lax", "runs": 8, "chunk": "cohort", "rounds_per_second": 3.0,
             "run_rounds_per_second": 24.0, "compile_seconds": 2.0},
            {"conv_impl": "lax", "dtype": "float32", "runs": 64, "cohort": 10, "chunk": "cohort",
             "status": "skipped: the budget of 5 s is spent"}]
    add_ratios(rows)
    assert rows[2]["ratio_to_torch_loop"] == 12.0 and rows[2]["ratio_to_torch_func"] == 6.0
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 6 and lines[4].endswith("| 66.7 min | 12.00x | 6.00x |")
    assert "skipped: the budget of 5 s is spent" in lines[5]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert (format_seconds(42), format_seconds(300), format_seconds(9000)) == ("42 s", "5 min", "2.5 h")


@pytest.mark.parametrize("args", [
    ["--protocol", "paper", "--runs", "0"], ["--protocol", "paper", "--runs", "1,x"],
    ["--protocol", "paper", "--runs", "1,1"], ["--protocol", "paper", "--cohort", ""],
    ["--protocol", "paper", "--conv-impl", "cudnn"], ["--protocol", "paper", "--conv-impl", "auto"],
    ["--protocol", "paper", "--dtype", "float16"], ["--protocol", "paper", "--chunk-policy", "wide"],
    ["--protocol", "paper", "--chunk-policy", "0"], ["--protocol", "paper", "--budget", "-1"],
    ["--protocol", "paper", "--budget", "nan"], ["--protocol", "paper", "--config-limit", "0"],
    ["--protocol", "paper", "--out", "/nonexistent-dir/rows.jsonl"],
    ["--protocol", "paper", "--model", "small_cnn"], ["--protocol", "paper", "--engine", "loop"],
    ["--protocol", "gpu"], ["--runs", "8"], ["--quick"], ["--out", "rows.jsonl"],
    ["--dtype", "float16"], ["--dtype", ""], ["--protocol", "paper", "--dtype", ""],
    ["--protocol", "paper", "--runs", "\u00b2"], ["--protocol", "paper", "--chunk-policy", "\u00b2"],
    ["--protocol", "paper", "--runs", "1,01"], ["--protocol", "paper", "--chunk-policy", "1,01"],
    ["--protocol", "paper", "--out", "rows.md"], ["--protocol", "paper", "--runs", "1025"], ["--protocol", "paper", "--cohort", "10,50001"],
    ["--protocol", "paper", "--quick", "--runs", "1024", "--cohort", "50000", "--chunk-policy", "cohort"],
])
def test_bad_input(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        status = main(["bench", *args])
    except SystemExit as exc:      # argparse's own checks (choices, types)
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_out_must_not_be_a_directory(tmp_path, capsys):
    assert main(["bench", "--protocol", "paper", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fifo", ["rows.jsonl", "rows.md"])
def test_out_or_its_table_at_a_pipe_is_refused_and_left_a_pipe(tmp_path, capsys, fifo):
    """Every output is renamed over its path: a pipe or a device (/dev/null) at --out or at its
    table would be replaced by a regular file (lock.check_file_path). A fifo stands in for
    /dev/null, which a failing test must not replace."""
    import stat
    os.mkfifo(tmp_path / fifo)
    assert main(["bench", "--protocol", "paper", "--quick", "--out", str(tmp_path / "rows.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is not a regular file" in err and err.count("\n") == 1
    assert stat.S_ISFIFO(os.stat(tmp_path / fifo).st_mode) and os.listdir(tmp_path) == [fifo]
