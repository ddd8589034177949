"""Every algorithm x {none, ln, fn} (and bn for fedavg/fedbn) x {1, 2} classes per client on
the digits, 30 rounds, seed 0; a Markdown table (rows: algorithms; cells: the mean of the last
3 evaluations, since the final accuracy under one-class skew oscillates from round to round).

Run (about 60 runs):

    fedln-jax figure --config experiments/configs/algorithms_digits.py --workdir runs/algorithms_digits

or, to change the rounds (evaluating 6 times) and the number of seeds:

    python experiments/configs/algorithms_digits.py --workdir runs/algorithms_digits [--rounds 30] [--seeds 1]

`fedln-jax run --config experiments/configs/algorithms_digits.py --workdir DIR algorithm=fedyogi
norm=fn` runs a single cell (get_config is the shared protocol, each algorithm with its default
hyperparameters). A diverged run is reported in its cell, not averaged.
"""
import argparse

from fedln_jax import Config
from fedln_jax.algorithms import ALGORITHM_NAMES

NORMS = ("none", "ln", "fn")
CLASSES = (1, 2)
# FedBN only differs from FedAvg when the model has BN layers: both also run with norm=bn.
BN_ALGORITHMS = ("fedavg", "fedbn")
FIGURE = {"kind": "final", "seeds": (0,), "table": "grid", "row_label": "algorithm",
          "column": "{x}", "cell": "last3", "diverged": "report",
          "caption": "Test accuracy on digits, 10 clients, n classes per client, {rounds} rounds "
                     "(mean of the last 3 evaluations; seeds {seeds}).",
          "title": "digits, 10 clients: algorithms x normalizers"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=30, eval_every=5, norm="fn")


def get_runs(algorithms=ALGORITHM_NAMES, norms=NORMS, classes=CLASSES) -> list[dict]:
    return [{"name": f"{algorithm}_{norm}_{n}class", "series": algorithm, "x": f"{norm} {n}-class",
             "overrides": {"algorithm": algorithm, "norm": norm, "classes_per_client": n}}
            for algorithm in algorithms for n in classes
            for norm in (*norms, *(("bn",) if algorithm in BN_ALGORITHMS else ()))]


if __name__ == "__main__":
    from fedln_jax.studies.figures import run_figure
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/algorithms_digits")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    run_figure(__file__, args.workdir, [f"rounds={args.rounds}",
                                        f"eval_every={max(args.rounds // 6, 1)}"],
               seeds=tuple(range(args.seeds)))
