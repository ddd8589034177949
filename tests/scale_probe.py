"""Run a tiny config through the real command line (`fedln-jax run`, or `sweep` with --sweep),
then print the device and process counts and the round's collectives as one JSON line.

Not a test: tests/test_scale.py starts it in subprocesses with different device counts
(XLA_FLAGS must be set before jax is imported, hence a fresh process) and process counts, and
compares the workdirs they leave.

    python tests/scale_probe.py --workdir DIR [--sweep] [--coordinator H:P --num-processes N
                                --process-id I] KEY=VALUE|KEY=V1,V2 ...
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(dataset="synthetic", num_clients=5, clients_per_round=3, classes_per_client=2,
            local_steps=2, batch_size=8, rounds=3, eval_every=1, lr=0.05, norm="ln")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes")
    parser.add_argument("--process-id")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    multi = [f for name in ("coordinator", "num_processes", "process_id")
             if getattr(args, name) is not None
             for f in (f"--{name.replace('_', '-')}", getattr(args, name))]
    items = {**{k: str(v) for k, v in TINY.items()},
             **dict(o.split("=", 1) for o in args.overrides)}
    from fedln_jax.cli import main as cli
    code = cli(["sweep" if args.sweep else "run", "--workdir", args.workdir, "--quiet", *multi,
                *(f"{k}={v}" for k, v in items.items())])
    if code:
        sys.exit(code)
    import jax

    from fedln_jax.config import Config, parse_overrides
    single = {k: v for k, v in items.items() if "," not in v}
    config = Config(**parse_overrides([f"{k}={v}" for k, v in single.items()])).validate()
    collectives, chunk_size = round_collectives(config)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                      "process_index": jax.process_index(), "chunk_size": chunk_size,
                      "collectives": collectives}))


def round_collectives(config) -> tuple[list, int]:
    """Cross-device operations XLA put into the compiled round (proof the clients are
    sharded), and the round's chunk width."""
    import re

    import jax

    from fedln_jax.training.experiment import build_experiment, hparams_of, initial_state
    from fedln_jax.training.layout import mesh_devices
    from fedln_jax.engine.placement import client_mesh, replicate
    from fedln_jax.engine.round import make_round_fn
    exp = build_experiment(config)
    mesh = client_mesh(mesh_devices(config))
    args = replicate((initial_state(exp), hparams_of(config), exp.data), mesh)
    text = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm, mesh)).lower(
        *args).compile().as_text()
    found = re.findall(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all)\b", text)
    return sorted(set(found)), exp.spec.chunk_size


if __name__ == "__main__":
    main()
