"""The paper's analysis 7 (docs/method.md#analyses): which part of LN matters, mean-shift or scaling? Per-layer primitives on
the small CNN's 4 positions (3 hidden + the penultimate feature):
  mean x4 (mean-shift only), l2 x3 + l2s (scaling only; = fn by the reduced-FN proposition),
  fn (l2s at the feature only), scale<c> at the feature (a fixed constant, not a normalization),
  lscale x4 (learnable scalar scales), mean x3 + ln (= ln by the reduced-LN proposition), ln.
Digits one-class, 200 rounds, lr 0.01, seed 0.

Run:  fedln-jax figure --config experiments/configs/ablation_mean_vs_scale.py --workdir runs/abl_mean_scale
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "norm_layers",
          "title": "mean-shift vs scaling (digits, 1 class per client, 200 rounds)"}
VARIANTS = {"none": "none,none,none,none", "mean": "mean,mean,mean,mean",
            "l2_all": "l2,l2,l2,l2s", "fn": "none,none,none,l2s",
            "scale0.1_feat": "none,none,none,scale0.1", "lscale": "lscale,lscale,lscale,lscale",
            "mean3_ln": "mean,mean,mean,ln", "ln": "ln,ln,ln,ln"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": name, "series": "norm_layers", "x": name, "overrides": {"norm_layers": spec}}
            for name, spec in VARIANTS.items()]
