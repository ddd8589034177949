"""The long commands killed with SIGKILL at a random moment (issue 29, item 4): `results`,
`figure`, `sweep` and `bench --protocol --out`. Each is run once uninterrupted (in this
process), once in a child process killed at a seeded random point of its work (after a random
number of its files exist, or of its rows for bench, plus a random few milliseconds), then
re-run here: nothing the killed one left is half-written (every page, table, plot, JSON and
JSONL is whole: each output is replaced by a rename, docs/testing.md), and the re-run's numbers
and layout equal the uninterrupted run's. The child shares the session's compilation cache
(tests/conftest.py), so it mostly loads what this process compiled.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from fedln_jax import cli
from fedln_jax.studies import regenerate, results_page
from fedln_jax.training import lock
from fedln_jax.studies.results_page import Section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
PNG_END = b"IEND\xaeB`\x82"
SKEW = ('from fedln_jax import Config\n'
        'def get_config():\n'
        '    return Config(dataset="synthetic", model="mlp", dense_features="8/8", num_clients=2,\n'
        '                  local_steps=1, batch_size=4, rounds=2, eval_every=1)\n'
        'FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "split"}\n'
        'def get_runs():\n'
        '    return [{"name": f"{n}_1", "series": n, "x": "1-class", "overrides": {"norm": n}}\n'
        '            for n in ("none", "ln")]\n')
SWEEP = ["sweep", "--quiet", "dataset=synthetic", "num_clients=4", "local_steps=2",
         "batch_size=8", "rounds=2", "eval_every=1", "seed=0,1"]
BENCH = ["bench", "--protocol", "paper", "--quick", "--no-torch", "--conv-impl", "lax",
         "--dtype", "float32", "--runs", "1", "--cohort", "3", "--chunk-policy", "cohort,narrow"]


def tiny_results(workdir: str, page: str, config_root: str) -> None:
    """`fedln-jax results` on one tiny figure (the CLI's own sections need real datasets)."""
    sections = (Section("skew", "skew.py", "Group", "Skew", "About the skew.",
                        results_page.skew_notes, image="skew.png"),)
    regenerate.regenerate(workdir, page, sections=sections, config_root=config_root,
                          command="fedln-jax results (test)")


def child(argv: list[str]) -> list[str]:
    """The command line of a child process running `argv`: `fedln-jax ARGV`, or for
    ["tiny_results", ...] that function of this module."""
    if argv[0] == "tiny_results":
        code = (f"import sys; sys.path.insert(0, {TESTS!r}); import test_kills; "
                f"test_kills.tiny_results(*sys.argv[1:])")
        return [sys.executable, "-c", code, *argv[1:]]
    return [sys.executable, "-m", "fedln_jax.cli", *argv]


def outputs(path) -> list[str]:
    """The files a command wrote below `path`, its checkpoints (orbax's own atomic saves,
    tests/test_checkpoint.py), lock files and temporary files aside."""
    found = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d != "checkpoints"]
        found += [os.path.join(root, n) for n in names
                  if not n.endswith(".lock") and ".tmp" not in n]
    return sorted(found)


def assert_whole(path) -> None:
    """Every output below `path` is a complete file of its kind."""
    for name in outputs(path):
        data = open(name, "rb").read()
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG") and data.endswith(PNG_END), f"torn image {name}"
        elif name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".jsonl"):
            assert data == b"" or data.endswith(b"\n"), f"torn last line in {name}"
            [json.loads(line) for line in data.splitlines()]
        elif name.endswith((".md", ".txt", ".csv")):
            assert data == b"" or data.endswith(b"\n"), f"torn text {name}"
        else:
            raise AssertionError(f"an output of unknown kind: {name}")


def kill_at_random(argv: list[str], seed: int, progress, points: int) -> int:
    """Start `argv` in a child, wait until progress() (files or rows so far) reaches a random
    point below `points` (what the uninterrupted run ends with), wait a random few ms, SIGKILL
    it. Returns the point; fails if the child ended before it was killed."""
    rng = random.Random(seed)
    point = rng.randint(max(0, points // 10), max(0, points - 2))
    proc = subprocess.Popen(child(argv), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while progress() < point and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.03))
    proc.kill()
    err = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, (
        f"the child ended before the kill at {point} of {points} (exit {proc.returncode}): {err}")
    return point


def run_rows(workdir) -> dict:
    """Each run's evaluation rows, timings aside: the numbers an interrupted run must repeat."""
    rows = {}
    for name in outputs(workdir):
        if name.endswith("metrics.jsonl"):
            rows[os.path.relpath(name, workdir)] = [
                {k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"}
                for line in open(name)]
    return rows


def without_times(path: str) -> dict:
    """A figure's results.json without its wall time and the paths of its workdir."""
    obj = json.load(open(path))
    for key in ("wall_seconds", "config_file"):
        obj.pop(key, None)
    obj["runs"] = [{k: v for k, v in run.items() if k != "workdir"} for run in obj["runs"]]
    return obj


def layout(workdir) -> list[str]:
    return [os.path.relpath(n, workdir) for n in outputs(workdir)]


def file_count(workdir):
    return lambda: len(outputs(workdir)) if os.path.isdir(workdir) else 0


@pytest.mark.parametrize("seed", [1])
def test_figure_killed_at_random_then_rerun_equals_an_uninterrupted_run(tmp_path, seed):
    config = tmp_path / "skew.py"
    config.write_text(SKEW)
    ref, work = str(tmp_path / "ref"), str(tmp_path / "work")
    argv = lambda w: ["figure", "--config", str(config), "--workdir", w, "--quiet"]
    assert cli.main(argv(ref)) == 0
    kill_at_random(argv(work), seed, file_count(work), len(outputs(ref)))
    assert_whole(work)
    assert cli.main(argv(work)) == 0
    assert layout(work) == layout(ref) and run_rows(work) == run_rows(ref)
    assert without_times(os.path.join(work, "results.json")) == \
        without_times(os.path.join(ref, "results.json"))
    assert open(os.path.join(work, "table.md")).read() == open(os.path.join(ref, "table.md")).read()
    assert not [n for n in os.listdir(work) if ".tmp" in n]   # the re-run replaced every temp file


@pytest.mark.parametrize("seed", [2])
def test_sweep_killed_at_random_then_rerun_equals_an_uninterrupted_run(tmp_path, seed):
    ref, work = str(tmp_path / "ref"), str(tmp_path / "work")
    argv = lambda w: SWEEP[:1] + ["--workdir", w] + SWEEP[1:]
    assert cli.main(argv(ref)) == 0
    kill_at_random(argv(work), seed, file_count(work), len(outputs(ref)))
    assert_whole(work)
    assert cli.main(argv(work)) == 0
    assert layout(work) == layout(ref) and run_rows(work) == run_rows(ref)
    for name in ("results.csv", "results.md"):
        assert open(os.path.join(work, name)).read() == open(os.path.join(ref, name)).read()
    assert not [n for n in os.listdir(work) if ".tmp" in n]


@pytest.mark.parametrize("seed", [3])
def test_results_killed_at_random_then_rerun_equals_an_uninterrupted_run(tmp_path, seed):
    root = tmp_path / "configs"
    root.mkdir()
    (root / "skew.py").write_text(SKEW)
    ref, work = str(tmp_path / "ref"), str(tmp_path / "work")
    page = lambda w: os.path.join(w, "page", "results.md")
    tiny_results(ref, page(ref), str(root))
    kill_at_random(["tiny_results", work, page(work), str(root)], seed, file_count(work),
                   len(outputs(ref)))
    assert_whole(work)
    tiny_results(work, page(work), str(root))
    assert layout(work) == layout(ref) and run_rows(work) == run_rows(ref)
    figure = os.path.join("figures", "skew")
    assert without_times(os.path.join(work, figure, "results.json")) == \
        without_times(os.path.join(ref, figure, "results.json"))
    for name in (os.path.join(figure, "table.md"), os.path.join("page", "figures", "skew.png")):
        assert os.path.exists(os.path.join(work, name))
    # The page differs from the reference only in its times and paths (the same numbers).
    same = lambda p: [line for line in open(p) if "seconds" not in line and " s " not in line
                      and "Wall time" not in line and "workdir" not in line]
    assert len(same(page(work))) == len(same(page(ref)))


@pytest.mark.parametrize("seed", [4])
def test_bench_protocol_out_killed_at_random_then_rerun_has_the_same_rows(tmp_path, seed):
    ref, out = str(tmp_path / "ref.jsonl"), str(tmp_path / "rows.jsonl")
    assert cli.main(BENCH + ["--out", ref]) == 0
    reference = [json.loads(line) for line in open(ref)]
    rows_so_far = lambda: (sum(1 for _ in open(out)) if os.path.exists(out) else -1)
    kill_at_random(BENCH + ["--out", out], seed, rows_so_far, len(reference) + 1)
    assert_whole(tmp_path)
    assert cli.main(BENCH + ["--out", out]) == 0
    rows = [json.loads(line) for line in open(out)]
    fixed = lambda row: {k: row[k] for k in ("conv_impl", "dtype", "runs", "cohort", "chunk",
                                             "chunk_size", "status", "train_loss")}
    assert [fixed(r) for r in rows] == [fixed(r) for r in reference]
    assert len(open(os.path.join(tmp_path, "rows.md")).read().splitlines()) == 2 + len(rows)


def test_a_second_bench_on_one_out_file_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    out.write_text('{"kept": 1}\n')
    with lock.hold_file(str(out), "--out"):   # as a first bench still running
        assert cli.main(BENCH + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {str(out)!r} is in use by pid "
                                               f"{os.getpid()}"), err
    assert out.read_text() == '{"kept": 1}\n' and not (tmp_path / "rows.md").exists()
