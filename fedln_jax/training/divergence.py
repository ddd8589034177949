"""When a run has diverged, and what its message blames: a non-finite loss, parameters or
model state (detected inside the compiled block, fedln_jax/engine/round.py), or a finite loss that
exploded (checked at each evaluation, train.py)."""
from __future__ import annotations

import math

from fedln_jax.algorithms import REGISTRY
from fedln_jax.config import Config


def diverged_message(config: Config, summary: dict) -> str:
    saved = summary.get("last_checkpoint_round")
    kept = (f"the last good checkpoint is round {saved}" if saved
            else "no checkpoint was saved before it")
    what = summary.get("diverged_because") or "non-finite loss or parameters"
    return (f"training diverged at round {summary['diverged_at_round']}: {what} "
            f"({divergence_knob(config)}); {kept}")


def divergence_knob(config: Config) -> str:
    """The step size to blame: server_lr when it was raised above the algorithm's default
    (the server step then scales the clients' mean update up), else the clients' lr."""
    default = REGISTRY[config.algorithm].default_server_lr
    if config.server_lr is not None and config.server_lr > default:
        return (f"server_lr={config.server_lr} is above {config.algorithm}'s default "
                f"{default}; lr={config.lr}")
    return f"lr={config.lr}"


# A run whose mean train loss over an evaluation interval exceeds this many times the loss of
# a uniform guess, log(num_classes), has blown up while staying finite (normalized models at
# a huge lr sit at chance with losses that grow with lr: FN at lr=1e4 ~3e4, lr=1e2 ~2e2).
# Legitimate runs stay within a few times log K (the demo below 1.1x); dividing by tau allows
# for the larger logits of a temperature below 1.
EXPLODED_LOSS_FACTOR = 100.0


def loss_exploded(train_loss: float, num_classes: int, tau: float) -> str:
    """Why the run counts as diverged at this train loss, or "" when it does not."""
    bound = EXPLODED_LOSS_FACTOR * math.log(max(num_classes, 2)) / min(tau, 1.0)
    if not train_loss > bound:
        return ""
    return (f"mean train loss {train_loss:.3g} over the evaluation interval, over "
            f"{EXPLODED_LOSS_FACTOR:g} x log(num_classes) (a uniform guess scores "
            f"{math.log(num_classes):.2f})")
