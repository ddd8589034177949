"""Run a tiny config and print its final parameters and metrics as one JSON line.

Not a test: tests/test_scale.py starts it in subprocesses with different device counts
(XLA_FLAGS must be set before jax is imported, hence a fresh process) and process counts.

    python tests/scale_probe.py [--coordinator H:P --num-processes N --process-id I] KEY=VALUE ...
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
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from fedln_jax import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax
    import numpy as np
    from fedln_jax import engine
    from fedln_jax.config import Config, parse_overrides
    from fedln_jax.train import build_experiment, mesh_devices, train_runs

    config = Config(**{**TINY, **parse_overrides(args.overrides)}).validate()
    exp = build_experiment(config)
    rows = []
    state = train_runs([exp], engine.client_mesh(mesh_devices(config)),
                       lambda round_, rs, n: rows.append(rs[0]))
    params = [np.asarray(jax.device_get(leaf))[0].ravel().tolist()
              for leaf in jax.tree.leaves(state.params)]
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                      "chunk_size": exp.spec.chunk_size, "params": params,
                      "collectives": round_collectives(exp, config),
                      "rows": [{k: r[k] for k in ("round", "train_loss", "test_loss",
                                                  "test_accuracy")} for r in rows]}))


def round_collectives(exp, config) -> list:
    """Cross-device operations XLA put into the compiled round: proof the clients are sharded."""
    import re
    import jax
    from fedln_jax import engine
    from fedln_jax.train import hparams_of, initial_state, mesh_devices
    mesh = engine.client_mesh(mesh_devices(config))
    args = engine.replicate((initial_state(exp), hparams_of(config), exp.data), mesh)
    text = jax.jit(engine.make_round_fn(exp.apply_fn, exp.spec, exp.server_tx, mesh)).lower(
        *args).compile().as_text()
    return sorted(set(re.findall(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all)\b", text)))


if __name__ == "__main__":
    main()
