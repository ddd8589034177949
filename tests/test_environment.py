"""Where a run runs: `fedln-jax info`, the CPU-fallback warning, the environment in summary.json,
and a checkpoint written under another jax/jaxlib resumed under this one. Plugins of unknown
names found as JAX finds them (one that fails to import, one that registers nothing, one that
works); a plugin that stops JAX, in one error line; two processes joined beside an accelerator
plugin (distributed initialization before any backend query), and a bad coordinator or process
id in one error line.

tests/data/floor_run is a 2-round run checkpointed under the floor versions (Python 3.11,
jax/jaxlib 0.10.2, flax 0.12.8), made with
    fedln-jax run --workdir tests/data/floor_run --quiet norm=fn rounds=2 eval_every=1 \
        checkpoint_every=2 conv_features=8/16
(then its .fedln.lock removed). CI's floor leg also writes a fresh one and hands it to the newest
leg through FEDLN_FLOOR_RUN (.ci/run)."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from fedln_jax.errors import FedlnError
from fedln_jax.runtime import distributed, environment, plugins
from fedln_jax.training.workdir import compiler_change_note

FLOOR_RUN = pathlib.Path(os.environ.get("FEDLN_FLOOR_RUN")
                         or pathlib.Path(__file__).parent / "data" / "floor_run")
FLOOR_OVERRIDES = ["norm=fn", "eval_every=1", "checkpoint_every=2", "conv_features=8/16"]


def fake_plugin(root: pathlib.Path, name="jax-cuda13-plugin", version="0.11.2") -> str:
    """A distribution's metadata with no code: importlib.metadata sees the plugin installed, JAX
    finds nothing to load (what a plugin built for another jaxlib looks like from outside)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return str(root)


def fake_unknown_plugins(root: pathlib.Path) -> str:
    """Two plugins of names no list knows, laid out as pip installs them, found only the way
    JAX finds plugins: fake-accel puts jax_plugins/fake_accel/ (the namespace package) and
    fails to import, as a plugin whose shared library is missing does; null-accel advertises
    its module null_accel_plugin in the jax_plugins entry-point group, imports, and registers
    no backend."""
    (root / "jax_plugins" / "fake_accel").mkdir(parents=True)
    (root / "jax_plugins" / "fake_accel" / "__init__.py").write_text(
        "raise ImportError('libfakeaccel.so.3: cannot open shared object file: No such file "
        "or directory')\n")
    (root / "null_accel_plugin.py").write_text("def initialize():\n    pass\n")
    for name, version, files, entry in (
            ("fake-accel", "1.0", "jax_plugins/fake_accel/__init__.py", None),
            ("null-accel", "2.0", "null_accel_plugin.py", "null_accel = null_accel_plugin")):
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{files},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        if entry:
            (info / "entry_points.txt").write_text(f"[jax_plugins]\n{entry}\n")
    return str(root)


UNKNOWN_REASONS = [
    "fake-accel 1.0 (jax_plugins.fake_accel): it failed to import (ImportError: "
    "libfakeaccel.so.3: cannot open shared object file: No such file or directory)",
    "null-accel 2.0 (null_accel_plugin): its initialize() registered no backend"]


def cli(args, env_extra=None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "fedln_jax.cli", *args], capture_output=True,
                          text=True, env=env)


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: jax-cuda13-plugin")]


def test_info_prints_versions_backend_devices_and_cache_without_warning():
    proc = cli(["info", "--cache-dir", "off"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = dict(line.split(None, 1) if " " in line else (line, "") for line in
                 proc.stdout.replace("compile cache", "compile_cache").splitlines())
    import jax
    assert lines["jax"] == jax.__version__ and lines["jaxlib"] == environment.version_of("jaxlib")
    assert lines["backend"].strip() == "cpu" and lines["devices"].strip().endswith("x cpu")
    assert lines["plugins"].strip() == "none (CPU only)" and lines["compile_cache"].strip() == "off"
    # which conv `conv_impl=auto` runs here, and why (docs/install.md#torch-convs)
    from fedln_jax.models import auto_conv_choice
    assert lines["conv_impl"].split(None, 2)[:2] == ["auto", auto_conv_choice()[0]]


def test_plugin_installed_but_cpu_backend_warns_with_the_platform_variable_as_reason(tmp_path):
    path = fake_plugin(tmp_path / "site")
    proc = cli(["info"], {"PYTHONPATH": path, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert warnings_in(proc.stderr) == [
        "warning: jax-cuda13-plugin 0.11.2 is installed but JAX runs on the CPU: "
        "JAX_PLATFORMS=cpu excludes it; training goes on, on the CPU"]
    assert "jax-cuda13-plugin 0.11.2" in proc.stdout


def test_plugin_for_another_jaxlib_is_named_with_both_versions(tmp_path):
    path = fake_plugin(tmp_path / "site", version="0.0.1")
    proc = cli(["info"], {"PYTHONPATH": path}, drop=("JAX_PLATFORMS", "JAX_PLATFORM_NAME"))
    assert proc.returncode == 0, proc.stderr
    [line] = warnings_in(proc.stderr)
    jaxlib = environment.version_of("jaxlib")
    assert f"it was built for jaxlib 0.0.1, this is jaxlib {jaxlib}" in line


def test_compiler_change_note_names_what_changed():
    now = {"jax": "0.12.0.1", "jaxlib": "0.12.0.1", "backend": "cpu"}
    assert compiler_change_note(dict(now), now) is None
    assert compiler_change_note(None, now) is None   # checkpoints from before this was recorded
    note = compiler_change_note({**now, "jax": "0.10.2", "jaxlib": "0.10.2"}, now)
    assert note == ("note: resuming a checkpoint written under another compiler (jax 0.10.2 -> "
                    "0.12.0.1, jaxlib 0.10.2 -> 0.12.0.1): the same program, not bit-identical "
                    "to an uninterrupted run")


def test_floor_checkpoint_resumes_here_and_summary_records_the_environment(tmp_path):
    """The floor versions' checkpoint at round 2, resumed for a third round by this JAX, under
    --quiet with a plugin installed that did not load: the warning once, the note where the
    versions differ, rounds 1-2 of metrics.jsonl kept as written."""
    workdir = tmp_path / "run"
    shutil.copytree(FLOOR_RUN, workdir)
    before = (workdir / "metrics.jsonl").read_text().splitlines()
    saved = json.loads((workdir / "summary.json").read_text())["environment"]
    # The checked-in fixture predates the `init` key: it started from lecun, and says so on resume.
    recorded = json.loads((workdir / "config.json").read_text())
    legacy = [] if "init" in recorded else ["init=lecun"]
    proc = cli(["run", "--workdir", str(workdir), "--quiet", "rounds=3", *FLOOR_OVERRIDES, *legacy],
               {"PYTHONPATH": fake_plugin(tmp_path / "site"), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert len(warnings_in(proc.stderr)) == 1
    import jax
    versions_differ = (saved["jax"], saved["jaxlib"]) != (jax.__version__,
                                                          environment.version_of("jaxlib"))
    assert ("note: resuming a checkpoint written under another compiler" in proc.stderr) \
        == versions_differ
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_round"] == 2 and summary["rounds_completed"] == 3
    assert summary["environment"] == {
        "backend": "cpu", "device_kind": "cpu", "device_count": 1, "process_count": 1,
        "jax": jax.__version__, "jaxlib": environment.version_of("jaxlib")}
    after = (workdir / "metrics.jsonl").read_text().splitlines()
    assert after[:2] == before and len(after) == 3
    assert 0.0 <= json.loads(after[2])["test_accuracy"] <= 1.0


def test_plugins_are_found_as_jax_finds_them_without_being_imported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(fake_unknown_plugins(tmp_path / "site"))
    found = {p.name: p for p in plugins.discover_plugins()}
    assert (found["fake-accel"].version, found["fake-accel"].module) == ("1.0",
                                                                        "jax_plugins.fake_accel")
    assert (found["null-accel"].version, found["null-accel"].module) == ("2.0",
                                                                        "null_accel_plugin")
    assert "jax_plugins.fake_accel" not in sys.modules and "null_accel_plugin" not in sys.modules


def test_info_names_every_plugin_that_gave_no_backend_in_one_warning_without_traceback(tmp_path):
    """JAX logs the failed import as a traceback; the user sees one line naming both plugins."""
    proc = cli(["info", "--cache-dir", "off"],
               {"PYTHONPATH": fake_unknown_plugins(tmp_path / "site")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: 2 JAX plugins are installed but JAX runs on the CPU: "
        + "; ".join(UNKNOWN_REASONS) + "; training goes on, on the CPU"]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("plugins")]
    assert line.split(None, 1)[1] == ("fake-accel 1.0 (jax_plugins.fake_accel) -> no backend, "
                                      "null-accel 2.0 (null_accel_plugin) -> no backend")


def test_a_plugin_that_gives_a_backend_is_named_with_it_and_not_warned_about(tmp_path):
    """A plugin of an unknown name whose initialize() registers a working backend (a second
    CPU client): the registration is traced to it, so no warning."""
    (tmp_path / "jax_plugins" / "okplat").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "okplat" / "__init__.py").write_text(
        "def initialize():\n    from jax._src import xla_bridge\n"
        "    xla_bridge.register_backend_factory('okplat', xla_bridge.make_cpu_client, "
        "priority=-10)\n")
    proc = cli(["info", "--cache-dir", "off"], {"PYTHONPATH": str(tmp_path)},
               drop=("JAX_PLATFORMS", "JAX_PLATFORM_NAME"))
    assert proc.returncode == 0, proc.stderr
    assert "okplat" not in proc.stderr and "Traceback" not in proc.stderr
    assert "jax_plugins.okplat -> okplat" in proc.stdout


def test_a_plugin_that_raises_on_import_stops_jax_in_one_error_line(tmp_path):
    """Not an ImportError: JAX lets it through and cannot start at all."""
    (tmp_path / "jax_plugins" / "boom").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "boom" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    proc = cli(["info", "--cache-dir", "off"], {"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: JAX cannot start: the plugin jax_plugins.boom raised "
                           "RuntimeError: boom when JAX loaded it"), line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MULTI_TINY = ["dataset=synthetic", "num_clients=4", "classes_per_client=3", "local_steps=2",
              "batch_size=8", "rounds=2", "eval_every=1"]


def test_two_processes_start_beside_an_accelerator_plugin_train_and_each_warn_once(tmp_path):
    """On a host with a GPU plugin installed, any backend query starts a backend, after which
    JAX refuses to join the processes: jax.distributed.initialize must come first, the plugin
    warning after (it was a traceback, exit 1, on every accelerator host)."""
    site = tmp_path / "site"
    fake_plugin(site)
    fake_unknown_plugins(site)
    env = {**os.environ, "PYTHONPATH": str(site), distributed.TIMEOUT_ENV: "120"}
    port, workdir = free_port(), tmp_path / "w"
    started = []
    try:
        for pid in (1, 0):   # output to files: a full pipe would block a process its peer waits on
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            proc = subprocess.Popen(
                [sys.executable, "-m", "fedln_jax.cli", "run", "--workdir", str(workdir),
                 "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                 "--process-id", str(pid), *MULTI_TINY], env=env, stdout=out, stderr=err,
                text=True)
            started.append((proc, out, err))
        for proc, out, err in started:
            proc.wait(timeout=300)
            err.seek(0)
            stderr = err.read()
            assert proc.returncode == 0, stderr[-3000:]
            assert "Traceback" not in stderr and "must be called before" not in stderr
            warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
            assert len(warnings) == 1, stderr
            assert warnings[0].startswith("warning: 3 JAX plugins are installed but JAX runs on "
                                          "the CPU: ")
            assert all(r in warnings[0] for r in UNKNOWN_REASONS), warnings[0]
            assert "jax-cuda13-plugin 0.11.2: JAX_PLATFORMS=cpu excludes it" in warnings[0]
    finally:
        for proc, *_ in started:
            proc.kill()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["environment"]["process_count"] == 2


@pytest.fixture
def held_port():
    """A port something else listens on (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.mark.parametrize("case", ["port in use", "no coordinator", "process id out of range",
                                  "distributed outside a cluster"])
def test_a_bad_coordinator_or_process_id_is_one_error_line(case, tmp_path, held_port):
    """XLA aborts the process (a fatal log line and a C++ stack) on an unreachable
    coordinator; these are checked first, beside an accelerator plugin as on a real host."""
    port = free_port()
    multi = {"port in use": ["--coordinator", f"127.0.0.1:{held_port}", "--process-id", "0"],
             "no coordinator": ["--coordinator", f"127.0.0.1:{port}", "--process-id", "1"],
             "process id out of range": ["--coordinator", f"127.0.0.1:{port}", "--process-id", "2"],
             "distributed outside a cluster": ["--distributed"]}[case]
    if case != "distributed outside a cluster":
        multi += ["--num-processes", "2"]
    fragment = {"port in use": "which is in use", "no coordinator": "no coordinator answered "
                "within 1 s", "process id out of range": "process_id must be in 0..num_processes-1",
                "distributed outside a cluster": "JAX found no cluster to join"}[case]
    workdir = tmp_path / "w"
    proc = cli(["run", "--workdir", str(workdir), "--quiet", *multi, *MULTI_TINY],
               {"PYTHONPATH": fake_plugin(tmp_path / "site"), distributed.TIMEOUT_ENV: "1"},
               drop=["FEDLN_COORDINATOR", "FEDLN_NUM_PROCESSES", "FEDLN_PROCESS_ID",
                     "FEDLN_DISTRIBUTED"]   # and a cluster JAX would detect around this test
               + [k for k in os.environ if k.startswith(("SLURM_", "OMPI_", "PMI_"))])
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("error:") and fragment in line, line
    assert not workdir.exists()


def test_a_coordinator_host_that_does_not_resolve_is_one_error(monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(FedlnError, match="host 'nohost' does not resolve"):
        distributed.check_reachable("nohost:1234", 1, wait_s=1)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "0")
    with pytest.raises(FedlnError, match="FEDLN_COORDINATOR_TIMEOUT must be"):
        distributed.timeout()
