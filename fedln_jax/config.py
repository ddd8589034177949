"""Config: one frozen dataclass, its validation, and typed KEY=VALUE overrides."""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import math
import os
import types
import typing
from typing import Any, Optional

from fedln_jax.algorithms import OWNED_HPARAMS, REGISTRY
from fedln_jax.data.augment import AUGMENT_SETTINGS, resolve_augmentation
from fedln_jax.data.partition import SCHEMES
from fedln_jax.data.sources import DATASETS
from fedln_jax.errors import FedlnError, first_line
from fedln_jax.models import (CONV_IMPLS, DTYPES, INITS, MODEL_NAMES, NORM_POSITIONS, NORM_PRESETS,
                              model_widths)
from fedln_jax.runtime.tensorboard_events import check_installed as check_tensorboard_installed


def _field(default: Any, *, choices=None, value: bool = False, resumable: bool = False):
    """A config field whose metadata says how the package treats the key. choices: the allowed values, taken from the registry that owns the names.
    value: only a value a round reads, never shapes or code: runs differing only in value
      keys share one vectorized program (program.py, docs/scale.md).
    resumable: decides how rounds are laid out (chunking, devices) or saved, never the
      numbers, so a resumed run may change it (train.compare_configs, docs/checkpoints.md).
    """
    return dataclasses.field(default=default, metadata={"choices": choices, "value": value,
                                                        "resumable": resumable})

# The root PRNG key holds the seed in one uint32 word: 2**32 would wrap around to seed 0.
MAX_SEED = 2**32 - 1
# At most half of each class is held out: beyond that the split trains on a handful of
# examples per class (and at 0.999 on one), which is a typo rather than an experiment.
MAX_TEST_FRACTION = 0.5
# Counts, sizes and rounds reach the jitted round as int32 (indices, the round counter, a
# client's [local_steps, batch_size] batch of example indices): past 2**31 - 1 they overflow.
INT32_MAX = 2**31 - 1
# The integer keys bounded by INT32_MAX (checked before anything else is built).
INT32_KEYS = ("num_clients", "clients_per_round", "local_steps", "batch_size", "rounds", "eval_every",
              "analysis_every", "classes_per_client", "min_client_examples", "image_size",
              "gn_groups", "checkpoint_every", "keep_checkpoints", "client_chunk_size", "num_devices")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Field names are the public config keys (docs/config.md)."""
    # data
    dataset: str = _field("digits", choices=DATASETS)
    data_dir: str = ""
    test_fraction: float = 0.2          # held-out share per class (datasets without an official test split)
    partition: str = _field("n_class", choices=SCHEMES)
    classes_per_client: int = 1
    dirichlet_beta: float = _field(0.1, value=True)
    min_client_examples: int = 1        # dirichlet guard: redraw while a client has fewer
    download: bool = True               # cifar10/100: fetch through TFDS when not in data_dir
    image_size: int = 0                 # tinyimagenet/pacs: image side in pixels (0 = 64)
    pacs_domain: str = ""               # pacs: held-out test domain ("" = stratified split)
    # auto | true | false | none | crop_flip | resized_crop
    augment: str = _field("auto", choices=AUGMENT_SETTINGS)
    # federation
    num_clients: int = 10
    clients_per_round: Optional[int] = None   # None = all clients every round
    local_steps: int = 10
    batch_size: int = 32
    lr: float = _field(0.01, value=True)
    momentum: float = _field(0.0, value=True)
    weight_decay: float = _field(0.0, value=True)
    rounds: int = 60
    eval_every: int = 10
    analysis_every: int = 0             # log feature/head norms and singular values at the
                                        # evaluations whose round is a multiple (0 = off)
    # model
    model: str = _field("auto", choices=("auto",) + MODEL_NAMES)   # auto = the dataset's default
    conv_features: str = ""             # cnn/small_cnn: conv widths, e.g. "32/64" ("" = the model's)
    dense_features: str = ""            # cnn/small_cnn/mlp: hidden dense widths, e.g. "128/64"
    norm: str = _field("none", choices=NORM_PRESETS)
    norm_layers: str = ""               # per-position override, e.g. "mean,mean,mean,ln"
    norm_position: str = _field("after", choices=NORM_POSITIONS)
    gn_groups: int = 4
    tau: float = 1.0                    # logit temperature
    init: str = _field("torch", choices=INITS)  # weights: torch (the reference's) | lecun (flax's)
    # algorithm (fedln_jax/algorithms). A hyperparameter owned by other algorithms must keep
    # its default: setting it is an error, since it would silently do nothing.
    algorithm: str = _field("fedavg", choices=REGISTRY)
    # None = the algorithm's default: 1.0, 0.01 for fedadam/fedyogi
    server_lr: Optional[float] = _field(None, value=True)
    prox_mu: float = _field(0.01, value=True)  # fedprox: mu/2 ||w - w_global||^2 (paper: swept 0.001-1, 0.01 best)
    server_momentum: float = _field(0.9, value=True)  # fedavgm
    server_beta1: float = _field(0.9, value=True)  # fedadam, fedyogi (docs/method.md#baselines)
    server_beta2: float = _field(0.99, value=True)  # fedadam, fedyogi
    server_tau: float = _field(1e-3, value=True)  # fedadam, fedyogi: added to sqrt(v)
    fedlc_tau: float = _field(1.0, value=True)  # fedlc: margin tau * n_k^(-1/4)
    fedrs_alpha: float = _field(0.5, value=True)  # fedrs: scale of absent classes' logits, in (0, 1]
    feddecorr_coef: float = _field(0.5, value=True)  # feddecorr (paper: 0.5)
    # bookkeeping and execution
    seed: int = _field(0, value=True)
    # save the run state every N rounds (0 = only at the end)
    checkpoint_every: int = _field(100, resumable=True)
    keep_checkpoints: int = _field(3, resumable=True)
    # clients vmapped together per device; None = backend default
    client_chunk_size: Optional[int] = _field(None, resumable=True)
    # devices the clients axis is laid out over; None = all
    num_devices: Optional[int] = _field(None, resumable=True)
    conv_impl: str = _field("auto", choices=CONV_IMPLS)
    # compute dtype (bfloat16 for GPU/TPU); params stay float32
    dtype: str = _field("float32", choices=DTYPES)
    # also write TensorBoard events to <workdir>/tensorboard (adds files, changes no number)
    tensorboard: bool = _field(False, resumable=True)

    @property
    def resolved_model(self) -> str:
        """model, or the dataset's default (its DATASETS record) when auto."""
        return DATASETS[self.dataset].default_model if self.model == "auto" else self.model

    @property
    def resolved_augment(self) -> str:
        """The augmentation mode applied on the device (data.augment): auto = the paper's per
        dataset (crop_flip for CIFAR/TinyImageNet, resized_crop for PACS, none for digits)."""
        return resolve_augmentation(self.augment, self.dataset)

    @property
    def resolved_server_lr(self) -> float:
        """server_lr, or the algorithm's default when unset."""
        if self.server_lr is not None:
            return self.server_lr
        return REGISTRY[self.algorithm].default_server_lr

    @property
    def cohort_size(self) -> int:
        """Clients trained per round."""
        return self.num_clients if self.clients_per_round is None else self.clients_per_round

    def validate(self) -> "Config":
        """Raise FedlnError naming the first problem; return self when valid. This is the one
        check of user input: the library below trusts a validated Config."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
            value = getattr(self, f.name)
            # inf/nan (or 1e400, parsed as inf) would only surface rounds later as "diverged"
            if isinstance(value, float) and not math.isfinite(value):
                raise FedlnError(f"{f.name} must be a finite number, got {value!r}")
        for f in dataclasses.fields(self):
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed is not None and value not in allowed:
                raise FedlnError(f"{f.name}={value!r} is not one of {', '.join(allowed)}")
        for key in ("num_clients", "local_steps", "batch_size", "rounds", "eval_every",
                    "gn_groups", "keep_checkpoints", "min_client_examples"):
            if getattr(self, key) < 1:
                raise FedlnError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "dirichlet_beta", "tau", "test_fraction", "server_tau", "server_lr"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise FedlnError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("client_chunk_size", "num_devices"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise FedlnError(f"{key} must be >= 1 (or none for the default), "
                                 f"got {getattr(self, key)}")
        for key in ("momentum", "weight_decay", "checkpoint_every", "seed",
                    "prox_mu", "fedlc_tau", "feddecorr_coef", "image_size", "analysis_every"):
            if not getattr(self, key) >= 0:
                raise FedlnError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("server_momentum", "server_beta1", "server_beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise FedlnError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if not 0 < self.fedrs_alpha <= 1:
            raise FedlnError(f"fedrs_alpha must be in (0, 1], got {self.fedrs_alpha}")
        self._check_algorithm_hparams()
        if not self.test_fraction <= MAX_TEST_FRACTION:
            raise FedlnError(f"test_fraction must be in (0, {MAX_TEST_FRACTION}] (the held-out "
                             f"share of each class), got {self.test_fraction}")
        if not self.seed <= MAX_SEED:
            raise FedlnError(f"seed must be in 0..{MAX_SEED} (it seeds a 32-bit PRNG key), "
                             f"got {self.seed}")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.num_clients:
            raise FedlnError(f"clients_per_round must be in 1..num_clients={self.num_clients}, "
                             f"got {self.clients_per_round}")
        self._check_sizes()
        resizable = [name for name, info in DATASETS.items() if info.resizable]
        if self.image_size and self.dataset not in resizable:
            raise FedlnError(f"image_size applies to {' and '.join(resizable)} only, "
                             f"not dataset={self.dataset!r}")
        if self.pacs_domain and self.dataset != "pacs":
            raise FedlnError(f"pacs_domain applies to dataset='pacs' only, not {self.dataset!r}")
        if self.classes_per_client < 1:
            raise FedlnError(f"classes_per_client must be >= 1, got {self.classes_per_client}")
        model_widths(self.resolved_model, self.conv_features, self.dense_features)
        if self.tensorboard:
            check_tensorboard_installed()
        return self

    def _check_sizes(self) -> None:
        """Upper bounds the jitted round can honour (int32); nothing is built to check them."""
        for key in INT32_KEYS:
            value = getattr(self, key)
            if value is not None and value > INT32_MAX:
                raise FedlnError(f"{key}={value} is too large: at most {INT32_MAX} (it is an "
                                 f"int32 inside the compiled round)")
        if self.local_steps * self.batch_size > INT32_MAX:
            raise FedlnError(f"local_steps x batch_size = {self.local_steps * self.batch_size} "
                             f"examples per client and round is too large: at most {INT32_MAX} "
                             f"(int32 indices); lower local_steps or batch_size")
        if self.image_size and 3 * self.image_size ** 2 > INT32_MAX:
            raise FedlnError(f"image_size={self.image_size} is too large: int32 pixel indices")
        if self.client_chunk_size is not None and self.client_chunk_size > self.cohort_size:
            raise FedlnError(f"client_chunk_size={self.client_chunk_size} is wider than the "
                             f"{self.cohort_size} clients trained per round (a wider chunk is "
                             f"only padding); use at most {self.cohort_size}")

    def _check_algorithm_hparams(self) -> None:
        """A hyperparameter of another algorithm set to a non-default value is an error."""
        defaults = Config()
        for key, owners in OWNED_HPARAMS.items():
            if self.algorithm not in owners and getattr(self, key) != getattr(defaults, key):
                raise FedlnError(f"{key} is a hyperparameter of {'/'.join(owners)}, not of "
                                 f"algorithm={self.algorithm}; leave it at its default")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        unknown = sorted(set(changes) - set(config_keys()))
        if unknown:
            raise FedlnError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(config_keys())}")
        return dataclasses.replace(self, **changes)


# docs/method.md#protocol, the reference protocol of the paper's tables: full participation, 10 local SGD
# steps of batch 32, lr 0.01, no momentum or weight decay, FedAvg of the whole model state
# weighted by client size, up to 10,000 rounds, evaluation every 100.
PAPER_PROTOCOL = dict(model="cnn", norm="none", local_steps=10, batch_size=32, lr=0.01,
                      momentum=0.0, weight_decay=0.0, algorithm="fedavg", rounds=10000,
                      eval_every=100, checkpoint_every=500, seed=0)


def paper_protocol(**setting) -> dict[str, Any]:
    """The overrides of a paper table setting: PAPER_PROTOCOL plus the setting's own keys."""
    return {**PAPER_PROTOCOL, **setting}


def config_keys() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Config))


def value_keys() -> tuple[str, ...]:
    """Keys that may differ between the runs of one vectorized program (declared on the fields)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("value"))


def resumable_keys() -> tuple[str, ...]:
    """Keys a resumed run may change (declared on the fields)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("resumable"))


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _check_type(key: str, value: Any, annotation: Any) -> None:
    base, optional = _unwrap_optional(annotation)
    if value is None and optional:
        return
    ok = (isinstance(value, bool) if base is bool else
          isinstance(value, int) and not isinstance(value, bool) if base is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if base is float else
          isinstance(value, base))
    if not ok:
        raise FedlnError(f"{key} must be of type {base.__name__}, got {value!r}")


def _unwrap_optional(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def parse_value(key: str, text: str) -> Any:
    """Turn the text of a KEY=VALUE override into the field's type."""
    if key not in config_keys():
        raise FedlnError(f"unknown config key {key!r}; known keys: {', '.join(config_keys())}")
    base, optional = _unwrap_optional(_field_types()[key])
    if text == "" and base is not str:
        # `clients_per_round=` would otherwise silently mean the default
        raise FedlnError(f"{key}= has no value" + (f"; write {key}=none for the default"
                                                   if optional else ""))
    if optional and text.lower() in ("none", "null", "all", "auto"):
        return None
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text
    except ValueError:
        raise FedlnError(f"{key} must be of type {base.__name__}, got {text!r}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['lr=0.1', 'norm=fn'] -> {'lr': 0.1, 'norm': 'fn'} typed by the Config fields."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise FedlnError(f"override {item!r} is not of the form KEY=VALUE")
        if key.strip() in out:
            raise FedlnError(f"config key {key.strip()!r} is given twice")
        out[key.strip()] = parse_value(key.strip(), text.strip())
    return out


def load_config_module(path: str):
    """Execute a Python config file (whatever its extension) and return it as a module; any
    failure, sys.exit() included, is one FedlnError."""
    if not os.path.isfile(path):
        raise FedlnError(f"config file {path!r} does not exist")
    # An explicit source loader: spec_from_file_location finds no loader for `.txt` and such.
    loader = importlib.machinery.SourceFileLoader("_fedln_user_config", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    try:
        loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a user file: report, do not trace back (or exit)
        raise FedlnError(f"config file {path!r} failed to load: {first_line(exc)}") from None
    return module


def call_config_function(module, name: str, path: str):
    """module.name() of a loaded config file; a missing, non-callable or failing function
    (or one that wants arguments) is one FedlnError."""
    function = getattr(module, name, None)
    if function is None:
        raise FedlnError(f"config file {path!r} defines no {name}()")
    if not callable(function):
        raise FedlnError(f"{name} in {path!r} is not a function")
    try:
        return function()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise FedlnError(f"{name}() in {path!r} failed: {first_line(exc)}") from None


def load_config_file(path: str) -> Config:
    """Load a Python config file defining get_config() -> Config | dict of overrides."""
    return config_of_module(load_config_module(path), path)


def config_of_module(module, path: str) -> Config:
    """The Config of a loaded config file's get_config()."""
    loaded = call_config_function(module, "get_config", path)
    if isinstance(loaded, Config):
        return loaded
    if isinstance(loaded, dict) and all(isinstance(k, str) for k in loaded):
        return Config().replace(**loaded)
    raise FedlnError(f"get_config() in {path!r} must return a Config or a dict")


def from_dict(values: dict[str, Any]) -> Config:
    return Config().replace(**values)


def build_config(config_file: Optional[str], overrides: list[str]) -> Config:
    """The CLI's path: file (or defaults), then KEY=VALUE overrides, then validation."""
    base = load_config_file(config_file) if config_file else Config()
    return base.replace(**parse_overrides(overrides)).validate()


# Keys added later whose default is not the behaviour before them (runs before `init`: lecun).
LEGACY_VALUES = {"init": "lecun"}


def with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A config.json written before a key existed, with that key at the behaviour from before
    it (its default, or LEGACY_VALUES'), so such a run stays resumable and comparable."""
    return {**Config().to_dict(), **LEGACY_VALUES, **values}


def diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def dumps(config: Config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
