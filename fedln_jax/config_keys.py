"""Every config key, declared once: its type (the annotation), default, allowed values (choices
or bounds), one line of help and how the package treats it (value, resumable, legacy).

Derived from these declarations: `Config` (fedln_jax/config.py subclasses ConfigKeys and adds
the rules between keys), the per-key checks of `Config.validate` (`check_keys`), the key table
of `run --help` and the one in docs/config.md (fedln_jax/config_help.py), the keys a vectorized
program may vary and a resumed run may change, and what an old config.json lacks (`with_defaults`).
Free of JAX, so that `run --help` reads it without importing JAX (docs/config.md#start-up).
A new key is one `key(...)` line below; then `python -m fedln_jax.config_help docs/config.md`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from typing import Any, Optional

from fedln_jax.choices import (ALGORITHM_NAMES, AUGMENT_SETTINGS, CONV_IMPLS, DATASET_NAMES,
                               DTYPES, INITS, MODEL_NAMES, NORM_POSITIONS, NORM_PRESET_NAMES,
                               PARTITION_NAMES)
from fedln_jax.errors import FedlnError

# The root PRNG key holds the seed in one uint32 word: 2**32 would wrap around to seed 0.
MAX_SEED = 2**32 - 1
# At most half of each class is held out: beyond that the split trains on a handful of
# examples per class (and at 0.999 on one), which is a typo rather than an experiment.
MAX_TEST_FRACTION = 0.5
# Counts, sizes and rounds reach the jitted round as int32 (indices, the round counter, a
# client's [local_steps, batch_size] batch of example indices): past 2**31 - 1 they overflow.
INT32_MAX = 2**31 - 1
INT32 = dict(at_most=INT32_MAX, why="it is an int32 inside the compiled round")
NO_LEGACY = object()   # a key whose runs from before it existed behaved as its default


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """What a key's field declares besides its type and default.

    choices: the allowed values, as named in choices.py (free of JAX, for the help).
    owner: "module:attribute" of the registry that owns those names; once its module is
      loaded, validation reads the registry itself (an entry registered there is valid at
      once; tests/test_cli_startup.py checks that the names here are the registry's).
    also: values allowed besides the registry's (`auto`).
    at_least / above, at_most / below: bounds (>=, >, <=, <); at_least and at_most may name
      another key. why: the reason for the upper bound, said when it is exceeded.
    rule: the allowed values in words, for a key whose check is a rule of Config.validate.
    value: only a value a round reads, never shapes or code: runs differing only in value
      keys share one vectorized program (program.py, docs/scale.md).
    resumable: decides how rounds are laid out (chunking, devices) or saved, never the
      numbers, so a resumed run may change it (workdir.compare_configs, docs/checkpoints.md).
    legacy: the behaviour of runs made before the key existed, where it is not the default.
    note: what docs/config.md adds to the help line.
    """
    help: str
    choices: Optional[tuple] = None
    owner: str = ""
    also: tuple = ()
    at_least: Any = None
    above: Any = None
    at_most: Any = None
    below: Any = None
    why: str = ""
    rule: str = ""
    value: bool = False
    resumable: bool = False
    legacy: Any = NO_LEGACY
    note: str = ""


def key(default: Any, help: str, **spec):
    """A config field: its default and its KeySpec."""
    return dataclasses.field(default=default, metadata={"key": KeySpec(help, **spec)})


@dataclasses.dataclass(frozen=True)
class ConfigKeys:
    """The config keys of a run, in the order of `run --help` and docs/config.md."""
    # data
    dataset: str = key("digits", "the dataset (docs/datasets.md)", choices=DATASET_NAMES,
                       owner="fedln_jax.data.sources:DATASETS", note=(
        "`digits` is scikit-learn's bundled 8x8 digits (no download), `synthetic` tiny (for "
        "tests), `mnist5k` a 28x28 MNIST subset (extra `fedln_jax[mnist]`), `cifar10`/`cifar100` "
        "come through TFDS, `tinyimagenet`/`pacs` from image folders; see "
        "[datasets](datasets.md)"))
    data_dir: str = key("", "TFDS data dir (CIFAR) or the image folder (TinyImageNet/PACS); "
                        "empty = the default", note="for CIFAR empty means `$TFDS_DATA_DIR` or "
                        "`~/tensorflow_datasets`")
    test_fraction: float = key(0.2, "held-out share per class for datasets without an "
                               "official test split", above=0, at_most=MAX_TEST_FRACTION,
                               why="at most half of each class is held out")
    partition: str = key("n_class", "label split over clients: iid, n_class "
                         "(classes_per_client each), dirichlet (dirichlet_beta)",
                         choices=PARTITION_NAMES, owner="fedln_jax.data.partition:SCHEMES")
    classes_per_client: int = key(1, "n of the n_class split: classes each client holds",
                                  at_least=1, **INT32)
    dirichlet_beta: float = key(0.1, "concentration of the dirichlet split (small = more skew)",
                                above=0, value=True)
    min_client_examples: int = key(1, "dirichlet: redraw while a client has fewer examples than "
                                   "this", at_least=1, **INT32,
                                   note="at most 100 redraws, then an error")
    download: bool = key(True, "CIFAR: download and prepare through TFDS when not in data_dir",
                         note="needs network and TensorFlow")
    image_size: int = key(0, "TinyImageNet/PACS: side of the decoded square images (0 = 64)",
                          at_least=0, **INT32)
    pacs_domain: str = key("", "PACS: domain held out as the test set (empty = stratified "
                           "split)", rule="with dataset=pacs only; a domain folder of data_dir "
                           "(checked when the data loads)", note=(
                               "`art_painting`, `cartoon`, `photo` or `sketch`; the stratified "
                               "split holds out `test_fraction` of every domain"))
    augment: str = key("auto", "on-device augmentation; auto = the paper's per dataset",
                       choices=AUGMENT_SETTINGS,
                       owner="fedln_jax.data.augment:AUGMENT_SETTINGS", note=(
                           "`auto`: crop+flip for CIFAR/TinyImageNet, resized crop for PACS, "
                           "none for digits/synthetic"))
    # federation
    num_clients: int = key(10, "clients in the federation", at_least=1, **INT32)
    clients_per_round: Optional[int] = key(None, "clients sampled per round, without "
                                           "replacement (none = all)", at_least=1,
                                           at_most="num_clients")
    local_steps: int = key(10, "local SGD mini-batch steps per round (steps, not epochs)",
                           at_least=1, **INT32)
    batch_size: int = key(32, "local mini-batch size", at_least=1, **INT32)
    lr: float = key(0.01, "client learning rate", above=0, value=True)
    momentum: float = key(0.0, "client SGD momentum", at_least=0, value=True)
    weight_decay: float = key(0.0, "client SGD weight decay", at_least=0, value=True)
    rounds: int = key(60, "communication rounds", at_least=1, **INT32)
    eval_every: int = key(10, "evaluate every this many rounds (and after the last)",
                          at_least=1, **INT32)
    analysis_every: int = key(0, "log feature/head norms and singular values at the "
                              "evaluations of multiples of this round (0 = off)", at_least=0,
                              **INT32, note=(
                                  "the metrics rows get `feature_norm_per_class`, "
                                  "`head_norm_per_class`, `singular_values`"))
    # model
    model: str = key("auto", "the model; auto = the dataset's default",
                     also=("auto",), choices=MODEL_NAMES, owner="fedln_jax.models:MODEL_NAMES",
                     note=(
                         "`cnn` is the paper's CNN (32x32x3), `small_cnn` its 8x8 counterpart, "
                         "`resnet18` CIFAR style, `resnet18_tiny` the same graph at widths "
                         "8/16/32/64 (for tests); see [models](models.md)"))
    conv_features: str = key("", "conv widths of cnn/small_cnn, e.g. 32/64 (empty = the "
                             "model's)", rule="one positive width per conv",
                             note="see [models](models.md#width)")
    dense_features: str = key("", "hidden dense widths of cnn/small_cnn/mlp, e.g. 128/64 "
                              "(empty = the model's)", rule="one positive width per hidden layer")
    norm: str = key("none", "normalizer preset", choices=NORM_PRESET_NAMES,
                    owner="fedln_jax.models.normalizers:NORM_PRESETS")
    norm_layers: str = key("", "one normalizer per normalized position, e.g. mean,mean,mean,ln "
                           "(overrides norm)", rule="the model's positions, comma-separated",
                           note="its primitives: "
                                "[models](models.md#per-layer-normalizers-norm_layers)")
    norm_position: str = key("after", "norm after (the paper) or before the ReLU",
                             choices=NORM_POSITIONS, owner="fedln_jax.models:NORM_POSITIONS")
    gn_groups: int = key(4, "groups of the gn preset (must divide every normalized width)",
                         at_least=1, **INT32)
    tau: float = key(1.0, "logits are divided by tau", above=0)
    init: str = key("torch", "weight initialization: torch (PyTorch's default, the paper's "
                    "code), lecun (flax's)", choices=INITS, owner="fedln_jax.models.layers:INITS",
                    legacy="lecun", note=(
                        "a run made before this key existed started from `lecun`: resume it "
                        "with `init=lecun` ([models](models.md#initialization))"))
    # algorithm (fedln_jax/algorithms). A hyperparameter owned by other algorithms must keep
    # its default: setting it is an error, since it would silently do nothing.
    algorithm: str = key("fedavg", "the federated algorithm (docs/algorithms.md)",
                         choices=ALGORITHM_NAMES, owner="fedln_jax.algorithms:REGISTRY")
    server_lr: Optional[float] = key(None, "server step on the averaged update (none = the "
                                     "algorithm's default: 1, 0.01 for fedadam/fedyogi)",
                                     above=0, value=True)
    prox_mu: float = key(0.01, "fedprox: weight mu of the proximal term mu/2 ||w - w_global||^2",
                         at_least=0, value=True,
                         note="the paper's setting (Appendix D, pp. 21-22; 1.0 before)")
    server_momentum: float = key(0.9, "fedavgm: server momentum", at_least=0, below=1,
                                 value=True)
    server_beta1: float = key(0.9, "fedadam/fedyogi: first-moment decay", at_least=0, below=1,
                              value=True)
    server_beta2: float = key(0.99, "fedadam/fedyogi: second-moment decay", at_least=0, below=1,
                              value=True)
    server_tau: float = key(1e-3, "fedadam/fedyogi: added to sqrt(v)", above=0, value=True)
    fedlc_tau: float = key(1.0, "fedlc: calibration margin scale tau (margin tau * n_k^(-1/4))",
                           at_least=0, value=True)
    fedrs_alpha: float = key(0.5, "fedrs: scale of absent classes' logits", above=0, at_most=1,
                             value=True)
    feddecorr_coef: float = key(0.5, "feddecorr: weight of the decorrelation penalty",
                                at_least=0, value=True,
                                note="the paper's setting (Appendix D, pp. 21-22; 0.1 before)")
    # bookkeeping and execution
    seed: int = key(0, "seeds the data split, partition, initialization and every draw",
                    at_least=0, at_most=MAX_SEED, why="it seeds a 32-bit PRNG key", value=True)
    checkpoint_every: int = key(100, "save the run state every N rounds (0 = only at the end)",
                                at_least=0, **INT32, resumable=True)
    keep_checkpoints: int = key(3, "checkpoints kept (the newest)", at_least=1, **INT32,
                                resumable=True)
    client_chunk_size: Optional[int] = key(
        None, "clients vmapped together per device (none = backend default)", at_least=1,
        **INT32, rule="at most the clients per round", resumable=True, note=(
            "the default is 1 on CPU; on GPU/TPU all, or the widest that fits the device "
            "([scale](scale.md#client_chunk_sizeauto))"))
    num_devices: Optional[int] = key(None, "devices the clients axis is laid out over (none = "
                                     "all)", at_least=1, **INT32, resumable=True)
    conv_impl: str = key("auto", "patches (im2col + matmul, fast on CPU), lax (XLA conv), torch "
                         "(PyTorch's CPU convs, optional: [install](install.md#torch-convs)), "
                         "torch_large (torch for convs >= 110M MACs); auto: torch_large on CPU "
                         "with PyTorch, else patches on CPU, lax on GPU/TPU", choices=CONV_IMPLS,
                         owner="fedln_jax.models.layers:CONV_IMPLS")
    dtype: str = key("float32", "compute dtype (parameters stay float32)", choices=DTYPES,
                     note="`bfloat16` is for GPU/TPU; normalizer statistics and the loss stay "
                          "float32 too")
    tensorboard: bool = key(False, "also write TensorBoard event files to the workdir's "
                            "tensorboard/ (needs the extra)", resumable=True,
                            note="`pip install 'fedln_jax[tensorboard]'`; see below")


def spec(name: str) -> KeySpec:
    return _SPECS[name]


_SPECS = {f.name: f.metadata["key"] for f in dataclasses.fields(ConfigKeys)}
_ANNOTATIONS = typing.get_type_hints(ConfigKeys)   # resolved once: validate reads them often


def config_keys() -> tuple[str, ...]:
    return tuple(_SPECS)


def value_keys() -> tuple[str, ...]:
    """Keys that may differ between the runs of one vectorized program."""
    return tuple(name for name, s in _SPECS.items() if s.value)


def resumable_keys() -> tuple[str, ...]:
    """Keys a resumed run may change."""
    return tuple(name for name, s in _SPECS.items() if s.resumable)


def defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(ConfigKeys)}


def with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A config.json written before a key existed, with that key at the behaviour from before
    it (its default, or its declared legacy value), so such a run stays resumable."""
    legacy = {name: s.legacy for name, s in _SPECS.items() if s.legacy is not NO_LEGACY}
    return {**defaults(), **legacy, **values}


def key_type(name: str) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a key's annotation."""
    annotation = _ANNOTATIONS[name]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def type_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with the type of a key's value (a non-finite float included), or None."""
    base, optional = key_type(name)
    if value is None and optional:
        return None
    if not _is_instance(value, base):
        return f"{name} must be of type {base.__name__}, got {value!r}"
    # inf/nan (or 1e400, parsed as inf) would only surface rounds later as "diverged"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    return None


def value_problem(name: str, values: dict[str, Any]) -> Optional[str]:
    """What is wrong with values[name] by its choices and bounds, or None; values are of their
    types. A bound naming another key reads that key from `values`."""
    value = values[name]
    if value is None:
        return None
    allowed = allowed_values(name)
    if allowed is not None and value not in allowed:
        return f"{name}={value!r} is not one of {', '.join(allowed)}"
    return _bound_problem(name, value, values)


def allowed_values(name: str) -> Optional[tuple]:
    """A key's choices (None: it has none): its owner's registry once the owner's module is
    loaded (config.py loads them all), else the names declared here."""
    s = _SPECS[name]
    if s.choices is None:
        return None
    module_name, _, attribute = s.owner.partition(":")
    owner = sys.modules.get(module_name) if s.owner else None
    return s.also + tuple(getattr(owner, attribute) if owner is not None else s.choices)


def _is_instance(value: Any, base: type) -> bool:
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, base)


def _bound_problem(name: str, value: Any, values: dict[str, Any]) -> Optional[str]:
    s, (base, optional) = _SPECS[name], key_type(name)
    low, high = _bound(s.at_least, s.above, values), _bound(s.at_most, s.below, values)
    low_ok = low is None or (value > low if s.above is not None else value >= low)
    high_ok = high is None or (value < high if s.below is not None else value <= high)
    if low_ok and high_ok:
        return None
    why = f" ({s.why})" if s.why else ""
    if isinstance(s.at_most, str):     # the bound is another key's value
        return f"{name} must be in {s.at_least}..{s.at_most}={high}, got {value}"
    if base is float and low is not None and high is not None:
        return f"{name} must be in {range_text(name)}{why}, got {value}"
    if not low_ok:
        none = " (or none for the default)" if optional else ""
        return f"{name} must be {'>' if s.above is not None else '>='} {low}{none}, got {value}"
    return f"{name}={value} is too large: at most {high}{why}"


def _bound(inclusive: Any, exclusive: Any, values: dict[str, Any]) -> Any:
    bound = exclusive if exclusive is not None else inclusive
    return values.get(bound) if isinstance(bound, str) else bound


def range_text(name: str) -> str:
    """A key's bounds in words: `> 0`, `(0, 1]`, `1..2**31-1`, `1..num_clients`, or ''."""
    s, (base, _) = _SPECS[name], key_type(name)
    low = s.above if s.above is not None else s.at_least
    high = s.below if s.below is not None else s.at_most
    if high is None:
        return "" if low is None else f"{'>' if s.above is not None else '>='} {low}"
    if base is int:
        return f"{low}..{_number_text(high)}"
    return (f"{'(' if s.above is not None else '['}{low}, {high}"
            f"{')' if s.below is not None else ']'}")


def _number_text(value: Any) -> str:
    """2**31-1 for the powers of two less one that bound the int keys; else the number."""
    if isinstance(value, int) and value > 2**16 and (value + 1) & value == 0:
        return f"2**{(value + 1).bit_length() - 1}-1"
    return str(value)


def allowed_text(name: str) -> str:
    """The values a key allows, in words (its choices, bounds or rule)."""
    if _SPECS[name].choices is not None:
        return ", ".join(allowed_values(name))
    return "; ".join(part for part in (range_text(name), _SPECS[name].rule) if part)


def type_text(name: str) -> str:
    base, optional = key_type(name)
    return base.__name__ + ("|none" if optional else "")


def default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def check_keys(values: dict[str, Any]) -> None:
    """Raise FedlnError on the first key whose value its declaration does not allow: every
    type before any choice or bound, so that a bound naming another key reads a number."""
    problems = [type_problem(name, values[name]) for name in _SPECS]
    problems += [value_problem(name, values) for name in _SPECS] if not any(problems) else []
    first = next((p for p in problems if p), None)
    if first:
        raise FedlnError(first)
