"""Scale: 1 device == 8 forced host devices, chunked == unchunked on 8 devices, 2 processes ==
1 process, and the bad inputs of the mesh. The device counts need fresh processes (XLA_FLAGS is
read when jax starts), so tests/scale_probe.py runs in subprocesses, all started at once."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from fedln_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "scale_probe.py")
FULL = ["num_clients=20", "clients_per_round=none"]   # 20 clients: 3 chunks of 8 lanes on 8 devices


def probe_env(devices):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def start(devices, *args):
    # Output goes to files, not pipes: a pipe nobody reads yet can fill and block a process
    # that its peer is waiting for.
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, PROBE, *args], env=probe_env(devices),
                            stdout=out, stderr=err, text=True)
    return proc, out, err


def result(started):
    proc, out, err = started
    proc.wait(timeout=900)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])   # gloo logs a line on stdout first


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def probes():
    port = free_port()
    coord = ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    # Two waves: the two cooperating processes must not be starved by the others (a starved
    # peer misses the coordination service's shutdown barrier).
    waves = [{
        "two_processes_0": start(1, *coord, "--process-id", "0"),
        "two_processes_1": start(1, *coord, "--process-id", "1"),
    }, {
        "one": lambda: start(1),
        "eight": lambda: start(8),                           # 3 clients on 8 devices: 5 padded
        "full_one": lambda: start(1, *FULL),                 # 20 sequential chunks of 1
    }, {
        "full_eight": lambda: start(8, *FULL, "client_chunk_size=1"),  # 3 chunks of 8, 4 padded
        "full_eight_wide": lambda: start(8, *FULL, "client_chunk_size=3"),  # 1 chunk of 24
    }]
    out = {}
    for i, wave in enumerate(waves):
        if i:
            wave = {name: factory() for name, factory in wave.items()}
        out.update({name: result(proc) for name, proc in wave.items()})
    return out


def assert_same_run(a, b, tol=1e-5):
    assert len(a["params"]) == len(b["params"])
    for x, y in zip(a["params"], b["params"]):
        np.testing.assert_allclose(x, y, atol=tol, rtol=0)
    assert [r["round"] for r in a["rows"]] == [r["round"] for r in b["rows"]] == [1, 2, 3]
    for ra, rb in zip(a["rows"], b["rows"]):
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert abs(ra[key] - rb[key]) < tol, (key, ra, rb)


def test_eight_devices_equal_one_with_cohort_not_divisible(probes):
    one, eight = probes["one"], probes["eight"]
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert eight["collectives"], "the clients axis was not laid out over the 8 devices"
    assert not one["collectives"]
    assert_same_run(one, eight)


def test_chunked_equals_unchunked_on_eight_devices(probes):
    assert [probes[k]["chunk_size"] for k in ("full_one", "full_eight", "full_eight_wide")] == [1, 1, 3]
    assert_same_run(probes["full_one"], probes["full_eight"])
    assert_same_run(probes["full_one"], probes["full_eight_wide"])


def test_two_processes_equal_one_process(probes):
    p0, p1 = probes["two_processes_0"], probes["two_processes_1"]
    assert (p0["processes"], p0["devices"]) == (2, 2)
    assert p0["collectives"]
    assert_same_run(probes["one"], p0)
    assert p0 == p1   # every process holds the same replicated result


@pytest.mark.parametrize("overrides, fragment", [
    (["num_devices=2"], "num_devices=2 cannot host the mesh: only 1 cpu device"),
    (["client_chunk_size=0"], "client_chunk_size must be >= 1"),
    (["client_chunk_size=-3"], "client_chunk_size must be >= 1"),
    (["num_devices=0"], "num_devices must be >= 1"),
])
def test_mesh_bad_input_one_error_line_exit_2(tmp_path, capsys, overrides, fragment):
    workdir = tmp_path / "w"
    assert main(["run", "--workdir", str(workdir), "--quiet", "dataset=synthetic",
                 "num_clients=4", "classes_per_client=3", "rounds=1", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not workdir.exists()


def test_multi_process_settings_need_all_three(monkeypatch):
    from fedln_jax import distributed
    from fedln_jax.errors import FedlnError
    for var in distributed.ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FEDLN_DISTRIBUTED", raising=False)
    assert distributed.settings() is None
    monkeypatch.setenv("FEDLN_NUM_PROCESSES", "2")
    with pytest.raises(FedlnError, match="missing: coordinator, process_id"):
        distributed.settings()
    assert distributed.settings("h:1", None, 1) == {"coordinator": "h:1", "num_processes": 2,
                                                    "process_id": 1}
    with pytest.raises(FedlnError, match="process_id must be in 0..num_processes-1"):
        distributed.settings("h:1", None, 2)
    monkeypatch.setenv("FEDLN_PROCESS_ID", "x")
    with pytest.raises(FedlnError, match="FEDLN_PROCESS_ID must be an integer"):
        distributed.settings()
