"""A sweep of R seeds on D devices: runs laid over devices (the default, layout.device_layout)
vs every run's clients laid over all devices (the layout of a single run).

Each side runs in a fresh process with D forced host devices (or the real devices with
--real-devices), end to end through train.run_group (data, compilation, training, evaluation,
files), back to back.

    PYTHONPATH=$PWD python benchmarks/runs_layout.py [--devices 2] [--seeds 2] [--rounds 30]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def point(layout: str, seeds: int, rounds: int, workdir: str) -> dict:
    import fedln_jax.training.layout as layout_module
    from fedln_jax.studies.demo import demo_config
    from fedln_jax.training.train import run_group
    if layout == "clients":
        layout_module.device_layout = lambda runs, devices: (1, devices)
    configs = [demo_config("fn", s, rounds) for s in range(seeds)]
    start = time.perf_counter()
    summaries = run_group(configs, [f"{workdir}/seed{s}" for s in range(seeds)], quiet=True)
    return {"layout": layout, "seconds": round(time.perf_counter() - start, 2),
            "device_layout": summaries[0]["device_layout"],
            "final": [s["final_test_accuracy"] for s in summaries]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--real-devices", action="store_true")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(point(args.point, args.seeds, args.rounds, tmp)))
        return
    env = {**os.environ, "PYTHONPATH": ROOT}
    if not args.real_devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    results = {}
    for layout in ("runs", "clients"):
        out = subprocess.run([sys.executable, __file__, "--point", layout, "--seeds",
                              str(args.seeds), "--rounds", str(args.rounds)],
                             env=env, capture_output=True, text=True, check=True).stdout
        results[layout] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[layout]))
    print(json.dumps({"devices": args.devices, "seeds": args.seeds, "rounds": args.rounds,
                      "clients_over_runs_seconds": round(results["clients"]["seconds"]
                                                         / results["runs"]["seconds"], 2)}))


if __name__ == "__main__":
    main()
