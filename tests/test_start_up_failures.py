"""JAX or XLA that cannot start in this environment (issue 29, item 5): `JAX_PLATFORMS` naming
a platform that is not here, XLA_FLAGS with an unknown flag, a value XLA cannot read or a word
it takes for a missing flags file, a JAX variable JAX cannot read, a malformed test hook. Each command that starts JAX answers with one `error:` line
and exit 2, never a traceback or XLA's fatal log line and usage list, and `run` / `results`
leave no workdir behind (fedln_jax/runtime/startup.py, fedln_jax/runtime/plugins.py; docs/install.md).
And in a fresh process, where nothing has configured logging, orbax's `WARNING:absl:` lines of
the read-only checkpoint manager stay out of `analyze`'s output (fedln_jax/training/checkpoint.py)."""
import os
import subprocess
import sys

import pytest

from fedln_jax import cli
from fedln_jax.runtime.startup import xla_flags_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKEN = {
    "cuda": ({"JAX_PLATFORMS": "cuda"}, "JAX cannot start with JAX_PLATFORMS=cuda: none of them"),
    "bogus": ({"JAX_PLATFORMS": "bogus"}, "not in the list of known backends"),
    "flag": ({"XLA_FLAGS": "--xla_bogus_flag"},
             "XLA_FLAGS='--xla_bogus_flag' is refused by XLA: Unknown flag in XLA_FLAGS"),
    "value": ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_enable_fast_math=maybe"},
              "Couldn't interpret value maybe for flag xla_cpu_enable_fast_math"),
    "file": ({"XLA_FLAGS": "xla_flags.txt"}, 'Could not open file "xla_flags.txt"'),
    "x64": ({"JAX_ENABLE_X64": "maybe"}, "invalid truth value 'maybe' for environment 'JAX_ENABLE_X64'"),
    "precision": ({"JAX_DEFAULT_MATMUL_PRECISION": "bogus"},
                  "(the environment variable JAX_DEFAULT_MATMUL_PRECISION)"),
    "pause": ({"FEDLN_TEST_PAUSE": "block"}, "FEDLN_TEST_PAUSE='block' is not EVENT:ROUND"),
}
COMMANDS = {
    "info": ["info"],
    "config --plan": ["config", "--plan", "dataset=synthetic", "num_clients=4"],
    "run": ["run", "--workdir", "{tmp}/new_run", "--quiet", "dataset=synthetic", "rounds=1"],
    "bench": ["bench", "--model", "small_cnn", "--clients", "2", "--rounds", "1"],
    "analyze": ["analyze", "--workdir", "{finished}", "--no-figures"],
    "results": ["results", "--workdir", "{tmp}/new_results", "--only", "demo", "rounds=1"],
}
# Every command under one broken platform and one broken flag; the other cases under `info`.
CASES = ([(case, command) for case in ("cuda", "flag") for command in COMMANDS]
         + [(case, "info") for case in ("bogus", "value", "file", "x64", "precision")]
         + [("pause", "run")])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    assert cli.main(["run", "--workdir", workdir, "--quiet", "dataset=synthetic", "num_clients=4",
                     "local_steps=1", "batch_size=8", "rounds=1", "eval_every=1"]) == 0
    return workdir


@pytest.mark.parametrize("case, command", CASES)
def test_a_jax_that_cannot_start_is_one_error_line(case, command, tmp_path, finished):
    env, fragment = BROKEN[case]
    argv = [a.format(tmp=tmp_path, finished=finished) for a in COMMANDS[command]]
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", *argv], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and fragment in lines[0], lines
    assert proc.stdout == ""
    assert sorted(os.listdir(tmp_path)) == []   # no workdir of run or results


def test_xla_flags_problem_reads_xlas_log():
    log = ("E1206 20:09:43.840273    2585 command_line_flags.cc:93] Couldn't interpret value x "
           "for flag xla_a.\nF1206 20:09:43.840335    2585 parse_flags_from_env.cc:220] Check "
           "failed: Flag parsing failed.\nusage: --xla_a=x\nFlags:\n\t--xla_a=false\tbool\n")
    assert xla_flags_problem(log) == "Couldn't interpret value x for flag xla_a."
    assert xla_flags_problem(log.replace("E1206", "W1206")) == \
        "Check failed: Flag parsing failed."
    assert xla_flags_problem("Traceback (most recent call last):\nImportError: x\n") is None


def test_good_xla_flags_pass_the_check_and_reach_xla(tmp_path):
    """A flag XLA knows is left to XLA: here it forces 3 host devices, which `info` reports."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "3 x cpu" in proc.stdout


def test_analyze_says_nothing_of_orbax_and_refuses_in_one_line(finished):
    analyze = [sys.executable, "-m", "fedln_jax.cli", "analyze", "--workdir", finished]
    proc = subprocess.run(analyze + ["--no-figures"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = subprocess.run(analyze + ["--client", "99"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr == \
        "error: client 99 is out of range: this run has 4 clients (0..3)\n", proc.stderr


def test_a_unicode_workdir_on_an_ascii_terminal_is_printed_escaped(tmp_path):
    """stdout that cannot encode the workdir's name: the line is escaped, not a traceback
    after the run trained (cli.main)."""
    workdir = tmp_path / "wü_日本"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", "run", "--workdir", str(workdir),
                           "--quiet", "dataset=synthetic", "num_clients=4", "local_steps=1",
                           "batch_size=8", "rounds=1"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.rstrip().endswith("w\\xfc_\\u65e5\\u672c")
