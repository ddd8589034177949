"""The benchmark: FLOP counts against hand counts, the JSON record, and loop == vectorized."""
import json
import math
import subprocess
import sys

import jax
import pytest

from fedln_jax.bench.speed import (forward_macs, resnet18_forward_macs, run_bench,
                                   train_flops_per_example)
from fedln_jax.cli import main
from fedln_jax.errors import FedlnError

KEYS = ("client_steps_per_second", "gflops_per_second", "round_seconds_median",
        "compile_seconds", "peak_rss_mb", "matmul_peak_gflops", "jax_version", "jaxlib_version")
TINY = ["--model", "small_cnn", "--clients", "3", "--local-steps", "2", "--batch-size", "4",
        "--rounds", "2"]


def test_small_cnn_macs_by_hand():
    # 8x8x1 input, 3x3 SAME convs: conv 1->16 on 8x8, pool to 4x4, conv 16->32 on 4x4,
    # pool to 2x2 (flatten 2*2*32 = 128), dense 128->128->64, head 64->10.
    by_hand = 8 * 8 * 16 * 9 + 4 * 4 * 32 * (9 * 16) + 128 * 128 + 128 * 64 + 64 * 10
    assert by_hand == 108_160
    assert forward_macs("small_cnn", (8, 8, 1), 10) == by_hand
    assert train_flops_per_example("small_cnn", (8, 8, 1), 10) == 6 * by_hand


def test_paper_cnn_macs_by_hand():
    # 32x32x3, 5x5 VALID: conv 3->64 gives 28x28, pool 14x14, conv 64->64 gives 10x10,
    # pool 5x5 (flatten 1600), dense 1600->384->192, head 192->10.
    by_hand = 28 * 28 * 64 * 75 + 10 * 10 * 64 * 1600 + 1600 * 384 + 384 * 192 + 192 * 10
    assert forward_macs("cnn", (32, 32, 3), 10) == by_hand == 14_693_248


def test_mlp_macs():
    assert forward_macs("mlp", (8, 8, 1), 10) == 64 * 256 + 256 * 128 + 128 * 10


def _check_record(record, engine):
    for key in KEYS:
        assert key in record, key
    assert record["engine"] == engine
    assert record["jax_version"] == jax.__version__
    for key in KEYS[:6]:
        assert isinstance(record[key], float) and math.isfinite(record[key]) and record[key] >= 0, key
    assert record["round_seconds_median"] > 0 and record["matmul_peak_gflops"] > 0
    flops = 3 * 2 * 4 * train_flops_per_example("small_cnn", (8, 8, 1), 10,
                                                record["conv_features"], record["dense_features"])
    assert math.isclose(record["gflops_per_second"] * record["round_seconds_median"], flops / 1e9)
    assert math.isclose(record["client_steps_per_second"] * record["round_seconds_median"], 3 * 2)


def test_bench_cli_prints_one_json_object_last():
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", "bench", *TINY,
                           "--conv-features", "8/12"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["conv_features"] == "8/12"   # the FLOPs checked below are of these widths
    _check_record(record, "vectorized")


def test_loop_engine_does_the_same_work(capsys):
    assert main(["bench", *TINY, "--engine", "loop"]) == 0
    loop = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check_record(loop, "loop")
    vectorized = run_bench("small_cnn", clients=3, local_steps=2, batch_size=4, rounds=2,
                           chunk_size=2, matmul_size=128)
    # same rounds from the same initial state: the last round's loss agrees
    assert abs(loop["train_loss"] - vectorized["train_loss"]) < 1e-5


def test_fused_rounds_per_call():
    record = run_bench("small_cnn", clients=2, local_steps=1, batch_size=4, rounds=2,
                       rounds_per_call=3, matmul_size=128)
    assert record["rounds_timed"] == 6 and record["rounds_per_call"] == 3
    assert math.isfinite(record["train_loss"]) and record["round_seconds_median"] > 0


@pytest.mark.parametrize("args", [["--clients", "0"], ["--rounds", "0"], ["--chunk-size", "-1"],
                                  ["--rounds-per-call", "0"],
                                  ["--engine", "loop", "--rounds-per-call", "2"],
                                  ["--conv-impl", "cudnn"], ["--chunk-policy", "wide"]])
def test_bench_bad_input(args, capsys):
    assert main(["bench", "--model", "small_cnn", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_conv_impl_and_chunk_policy_are_recorded():
    """Both formulations and both chunk policies run on any backend and say what they ran."""
    narrow = run_bench("small_cnn", clients=2, local_steps=1, batch_size=4, rounds=1,
                       matmul_size=128, conv_impl="lax", chunk_policy="narrow")
    cohort = run_bench("small_cnn", clients=2, local_steps=1, batch_size=4, rounds=1,
                       matmul_size=128, conv_impl="patches", chunk_policy="cohort")
    assert (narrow["conv_impl"], narrow["chunk_size"], narrow["chunk_policy"]) == ("lax", 1, "narrow")
    assert (cohort["conv_impl"], cohort["chunk_size"], cohort["chunk_policy"]) == ("patches", 2, "cohort")
    assert narrow["backend"] == jax.default_backend() and narrow["device_kind"]
    # the same rounds from the same state, whatever the formulation and the chunk width
    assert abs(narrow["train_loss"] - cohort["train_loss"]) < 1e-5


def test_run_bench_unknown_engine():
    with pytest.raises(FedlnError):
        run_bench("small_cnn", engine_name="pmap")


def test_resnet18_macs_by_hand():
    conv = lambda s, cout, cin, k=3: s * s * cout * k * k * cin
    by_hand = (conv(32, 64, 3) + 4 * conv(32, 64, 64)
               + conv(16, 128, 64) + 3 * conv(16, 128, 128) + conv(16, 128, 64, k=1)
               + conv(8, 256, 128) + 3 * conv(8, 256, 256) + conv(8, 256, 128, k=1)
               + conv(4, 512, 256) + 3 * conv(4, 512, 512) + conv(4, 512, 256, k=1) + 512 * 10)
    assert resnet18_forward_macs(10) == by_hand
    assert 0.55e9 < by_hand < 0.56e9      # the usual "0.56 GMACs" of CIFAR ResNet-18
