"""Where a run runs: `fedln-jax info`, the CPU-fallback warning, the environment in summary.json,
and a checkpoint written under another jax/jaxlib resumed under this one.

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
import subprocess
import sys

from fedln_jax import environment
from fedln_jax.workdir import compiler_change_note

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
    proc = cli(["run", "--workdir", str(workdir), "--quiet", "rounds=3", *FLOOR_OVERRIDES],
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
