"""One line of meaning per config key, and the key table `run --help` / `sweep --help` print
(written into fedln_jax/config_keys.txt, which the CLI reads without importing JAX:
`python -m fedln_jax.config_help > fedln_jax/config_keys.txt` after a key changes).

Type and default come from the Config dataclass itself; only the meaning is written here, and
tests/test_config_help.py checks that every Config field has one (and nothing else does), so
the help cannot fall behind the keys. The longer reference is docs/config.md.
"""
from __future__ import annotations

import dataclasses

from fedln_jax.config import Config, _field_types, _unwrap_optional

MEANINGS = {
    # data
    "dataset": "digits (bundled 8x8), mnist5k (28x28, extra [mnist]), synthetic (tiny, for tests), cifar10, cifar100, tinyimagenet, pacs",
    "data_dir": "TFDS data dir (CIFAR) or the image folder (TinyImageNet/PACS); empty = the default",
    "test_fraction": "held-out share per class for datasets without an official test split",
    "partition": "label split over clients: iid, n_class, dirichlet",
    "classes_per_client": "n of the n_class split: classes each client holds",
    "dirichlet_beta": "concentration of the dirichlet split (small = more skew)",
    "min_client_examples": "dirichlet: redraw while a client has fewer examples than this",
    "download": "CIFAR: download and prepare through TFDS when not in data_dir",
    "image_size": "TinyImageNet/PACS: side of the decoded square images (0 = 64)",
    "pacs_domain": "PACS: domain held out as the test set (empty = stratified split)",
    "augment": "on-device augmentation: auto, true, false, none, crop_flip, resized_crop",
    # federation
    "num_clients": "clients in the federation",
    "clients_per_round": "clients sampled per round (none = all)",
    "local_steps": "local SGD mini-batch steps per round",
    "batch_size": "local mini-batch size",
    "lr": "client learning rate",
    "momentum": "client SGD momentum",
    "weight_decay": "client SGD weight decay",
    "rounds": "communication rounds",
    "eval_every": "evaluate every this many rounds (and after the last)",
    "analysis_every": "log feature/head norms and singular values at these evaluations (0 = off)",
    # model
    "model": "auto (per dataset), cnn, small_cnn, mlp, resnet18, resnet18_tiny",
    "conv_features": "conv widths of cnn/small_cnn, e.g. 32/64 (empty = the model's)",
    "dense_features": "hidden dense widths of cnn/small_cnn/mlp, e.g. 128/64 (empty = the model's)",
    "norm": "normalizer preset: none, bn, gn, ln, fn",
    "norm_layers": "one primitive per normalized position, e.g. mean,mean,mean,ln (overrides norm)",
    "norm_position": "norm after (the paper) or before the ReLU",
    "gn_groups": "groups of the gn preset",
    "tau": "logits are divided by tau",
    "init": "weight initialization: torch (PyTorch's default, the paper's code), lecun (flax's)",
    # algorithm
    "algorithm": "the federated algorithm (docs/algorithms.md)",
    "server_lr": "server step on the averaged update (none = the algorithm's default)",
    "prox_mu": "fedprox: weight of the proximal term",
    "server_momentum": "fedavgm: server momentum",
    "server_beta1": "fedadam/fedyogi: first-moment decay",
    "server_beta2": "fedadam/fedyogi: second-moment decay",
    "server_tau": "fedadam/fedyogi: added to sqrt(v)",
    "fedlc_tau": "fedlc: calibration margin scale",
    "fedrs_alpha": "fedrs: scale of absent classes' logits, in (0, 1]",
    "feddecorr_coef": "feddecorr: weight of the decorrelation penalty",
    # bookkeeping and execution
    "seed": "seeds the data split, partition, initialization and every draw",
    "checkpoint_every": "save the run state every N rounds (0 = only at the end)",
    "keep_checkpoints": "checkpoints kept (the newest)",
    "client_chunk_size": "clients vmapped together per device (none = backend default)",
    "num_devices": "devices the clients axis is laid out over (none = all)",
    "conv_impl": "auto (docs/install.md#torch-convs), patches (im2col + matmul), lax (XLA conv), torch (PyTorch CPU convs)",
    "dtype": "compute dtype: float32, bfloat16 (parameters stay float32)",
    "tensorboard": "also write TensorBoard event files to <workdir>/tensorboard (needs the extra)",
}


def type_name(key: str) -> str:
    base, optional = _unwrap_optional(_field_types()[key])
    return base.__name__ + ("|none" if optional else "")


def default_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def key_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every Config field, in field order."""
    return [(f.name, type_name(f.name), default_text(f.default), MEANINGS.get(f.name, ""))
            for f in dataclasses.fields(Config)]


def keys_help() -> str:
    """The config key table of `fedln-jax run --help` and `sweep --help`."""
    rows = key_rows()
    width = max(len(k) for k, *_ in rows)
    types = max(len(t) for _, t, _, _ in rows)
    defaults = max(len(d) for _, _, d, _ in rows)
    lines = ["config keys (KEY=VALUE; key, type, default, meaning; docs/config.md):"]
    lines += [f"  {k:<{width}}  {t:<{types}}  {d:<{defaults}}  {m}" for k, t, d, m in rows]
    return "\n".join(lines)


if __name__ == "__main__":   # regenerates fedln_jax/config_keys.txt (tests/test_config_help.py)
    print(keys_help())
