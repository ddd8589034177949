"""The headline setting: digits, 10 clients x 1 class, 10 local steps of batch 32, lr 0.01,
the digits CNN at conv widths 32/64 (why: docs/models.md#width).

Run:  fedln-jax run --workdir runs/demo_fn --config experiments/configs/demo.py norm=fn
(`fedln-jax demo` runs this for none, ln and fn over three seeds and plots them.)
"""
from fedln_jax import Config


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=60, eval_every=5, norm="fn",
                  conv_features="32/64")
