"""Round time and peak memory vs clients per round (digits, small CNN, one class per client).

Each point runs in a fresh process so its peak RSS (ru_maxrss) is its own. The round time is
measured after compilation, over a block of rounds fused into one program.

    PYTHONPATH=$PWD python benchmarks/clients_scaling.py [--clients 10,100,1000] [--chunks 1,all]
"""
import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(clients: int, chunk: str, rounds: int) -> dict:
    import jax
    from fedln_jax.config import Config
    from fedln_jax.training.experiment import build_experiment, hparams_of, initial_state
    from fedln_jax.training.layout import mesh_devices
    from fedln_jax.engine.placement import client_mesh, replicate
    from fedln_jax.engine.round import make_multi_round_fn, make_round_fn
    from round_timing import time_rounds

    config = Config(dataset="digits", partition="n_class", classes_per_client=1,
                    num_clients=clients, local_steps=10, batch_size=32, lr=0.01,
                    client_chunk_size=None if chunk == "default" else
                    clients if chunk == "all" else int(chunk)).validate()
    exp = build_experiment(config)
    mesh = client_mesh(mesh_devices(config))
    state, hp, data = replicate((initial_state(exp), hparams_of(config), exp.data), mesh)
    run_rounds = jax.jit(make_multi_round_fn(
        make_round_fn(exp.apply_fn, exp.spec, exp.algorithm, mesh)), donate_argnums=0)
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state, loss, first, per_round = time_rounds(run_rounds, state, hp, data, rounds)
    return {"clients_per_round": clients, "chunk_size": exp.spec.chunk_size,
            "devices": len(mesh.devices.ravel()), "compile_plus_first_round_s": round(first, 2),
            "round_s": round(per_round, 3), "client_updates_per_s": round(clients / per_round, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_training_mib": round(rss_before_kib / 1024, 1),
            "train_loss": round(float(loss), 4)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--chunks", default="default,all",
                        help="client_chunk_size values: default (1 per device on CPU), all, or N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        clients, chunk = args.point.split(":")
        print(json.dumps(measure(int(clients), chunk, args.rounds)))
        return
    env = {**os.environ, "PYTHONPATH": ROOT}
    for chunk in args.chunks.split(","):
        for clients in args.clients.split(","):
            out = subprocess.run([sys.executable, __file__, "--point", f"{clients}:{chunk}",
                                  "--rounds", str(args.rounds)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
