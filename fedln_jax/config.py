"""Config: the run's frozen dataclass (its keys declared in config_keys.py), the rules between
keys that validation adds, and typed KEY=VALUE overrides."""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import os
from typing import Any, Optional

from fedln_jax.algorithms import OWNED_HPARAMS, REGISTRY
from fedln_jax.config_keys import (INT32_MAX, MAX_SEED, MAX_TEST_FRACTION, ConfigKeys,
                                   check_keys, config_keys, key_type, resumable_keys,
                                   value_keys, with_defaults)
from fedln_jax.data.augment import resolve_augmentation
from fedln_jax.data.sources import DATASETS
from fedln_jax.errors import FedlnError, first_line
from fedln_jax.models import PRIMITIVES, checked_norms, model_widths, num_norm_positions
from fedln_jax.runtime.tensorboard_events import check_installed as check_tensorboard_installed

__all__ = ["Config", "INT32_MAX", "MAX_SEED", "MAX_TEST_FRACTION", "config_keys", "value_keys",
           "resumable_keys", "with_defaults"]


@dataclasses.dataclass(frozen=True)
class Config(ConfigKeys):
    """Everything that defines a run. Its fields are the public config keys, declared once in
    config_keys.ConfigKeys (docs/config.md); this class adds what is derived from them and
    the checks between keys."""

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

    @property
    def norm_label(self) -> str:
        """What normalizes the model, for logs, progress bars and tables: the norm_layers
        override when set (it replaces the preset), else the preset `norm`."""
        layers = [s.strip().lower() for s in self.norm_layers.split(",")]
        return ",".join(layers) if self.norm_layers.strip() else self.norm

    def validate(self) -> "Config":
        """Raise FedlnError naming the first problem; return self when valid. This is the one
        check of user input: the library below trusts a validated Config. Each key is checked
        by its declaration (config_keys.check_keys), then the rules between keys."""
        check_keys(self.to_dict())
        self._check_algorithm_hparams()
        self._check_sizes()
        resizable = [name for name, info in DATASETS.items() if info.resizable]
        if self.image_size and self.dataset not in resizable:
            raise FedlnError(f"image_size applies to {' and '.join(resizable)} only, "
                             f"not dataset={self.dataset!r}")
        if self.pacs_domain and self.dataset != "pacs":
            raise FedlnError(f"pacs_domain applies to dataset='pacs' only, not {self.dataset!r}")
        self._check_norms(model_widths(self.resolved_model, self.conv_features,
                                       self.dense_features))
        if self.tensorboard:
            check_tensorboard_installed()
        return self

    def _check_sizes(self) -> None:
        """Products of keys the jitted round can honour (int32); nothing is built to check them."""
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

    def _check_norms(self, widths: tuple[int, ...]) -> None:
        """Every normalizer of the model is known and fits the width it normalizes, before
        the model is built: one error naming the key at fault and what it allows."""
        try:
            checked_norms(self.resolved_model, self.norm, self.norm_layers, self.gn_groups, widths)
        except FedlnError as exc:
            if not self.norm_layers.strip():
                raise FedlnError(f"norm={self.norm} with gn_groups={self.gn_groups} does not "
                                 f"fit model {self.resolved_model}: {exc}") from None
            allowed = ("" if "expected one of" in str(exc) else
                       f", each one of {', '.join(PRIMITIVES)}")   # unless exc lists them
            raise FedlnError(
                f"norm_layers={self.norm_layers!r} does not fit model {self.resolved_model}: "
                f"{exc}; it takes {num_norm_positions(self.resolved_model)} comma-separated "
                f"normalizers{allowed} (docs/models.md)") from None

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


def parse_value(key: str, text: str) -> Any:
    """Turn the text of a KEY=VALUE override into the field's type."""
    if key not in config_keys():
        raise FedlnError(f"unknown config key {key!r}; known keys: {', '.join(config_keys())}")
    base, optional = key_type(key)
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


def diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def dumps(config: Config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
