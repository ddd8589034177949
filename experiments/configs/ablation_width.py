"""Width of the digits CNN: none / ln / fn at conv widths 16/32 (small_cnn's own) and 32/64
(the demo's), dense widths 128/64 throughout (8/16 and 64/64 were measured once too, see
docs/models.md#width; the regenerated page keeps the two widths its models use). The gap between
fn and ln depends on this width; the result decides the demo's model (docs/models.md, "Width").
Digits, 10 clients x 1 class, 10 local steps of batch 32, lr 0.01, 200 rounds, seeds 0 and 1.

Run:  fedln-jax figure --config experiments/configs/ablation_width.py --workdir runs/abl_width
(one run: fedln-jax run --workdir runs/w32 --config experiments/configs/ablation_width.py conv_features=32/64)
"""
from fedln_jax import Config

CONV_WIDTHS = ("16/32", "32/64")
FIGURE = {"kind": "final", "seeds": (0, 1), "xlabel": "conv_features",
          "title": "conv width of the digits CNN (1 class per client, 200 rounds, seeds 0 and 1)"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5, norm="fn")


def get_runs() -> list[dict]:
    return [{"name": f"{norm}_c{width.replace('/', 'x')}", "series": norm, "x": width,
             "overrides": {"norm": norm, "conv_features": width}}
            for width in CONV_WIDTHS for norm in ("none", "ln", "fn")]
