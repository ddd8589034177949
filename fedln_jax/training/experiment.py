"""An experiment built from a Config: data, partition, model, round spec and algorithm, with
the pure functions a training loop calls on it (initial state, hyperparameters, evaluation)."""
from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.algorithms import Algorithm, get_algorithm
from fedln_jax.config import Config
from fedln_jax.data import class_counts, client_test_weights, load_dataset, partition
from fedln_jax.data.dataset import Dataset
from fedln_jax.data.sources import LoadOptions
from fedln_jax.engine.client import epochs_needed, make_apply_fn
from fedln_jax.engine.state import DeviceData, RoundSpec, ServerState, init_state, make_data
from fedln_jax.errors import FedlnError
from fedln_jax.models import build_model
from fedln_jax.training.layout import decide_layout
from fedln_jax.training.memory import Floor, activation_bytes, client_round_bytes, tree_bytes


class Experiment(NamedTuple):
    """Everything a run needs, built from a Config before anything is written to disk."""
    config: Config
    model: Any
    apply_fn: Any
    spec: RoundSpec
    data: DeviceData
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int
    counts_CK: np.ndarray           # training examples per client and class
    test_weights_CK: np.ndarray
    algorithm: Algorithm
    floor: Floor                    # one run's memory floor (its width: layout.decide_layout)


def build_experiment(config: Config, dataset: Dataset | None = None) -> Experiment:
    """Data, partition, model and round spec. Raises FedlnError on impossible requests.
    `dataset`: the data to use instead of loading config.dataset (plan.py's stand-in of the
    declared shapes)."""
    config.validate()
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                               test_fraction=config.test_fraction,
                               options=LoadOptions(download=config.download,
                                                   image_size=config.image_size,
                                                   pacs_domain=config.pacs_domain))
    if config.num_clients > len(dataset.y_train):   # before a partition of that many clients
        raise FedlnError(f"num_clients={config.num_clients} exceeds the {len(dataset.y_train)} "
                         f"training examples of {config.dataset}: every client needs one; "
                         f"lower num_clients")
    clients = partition(dataset.y_train, config.num_clients, scheme=config.partition,
                        num_classes=dataset.num_classes,
                        classes_per_client=config.classes_per_client,
                        dirichlet_beta=config.dirichlet_beta, seed=config.seed,
                        min_examples=config.min_client_examples)
    counts_CK = class_counts(dataset.y_train, clients, dataset.num_classes)
    model = build_model(config.resolved_model, config.norm, dataset.num_classes,
                        norm_layers=config.norm_layers, norm_position=config.norm_position,
                        gn_groups=config.gn_groups, tau=config.tau, conv_impl=config.conv_impl,
                        dtype=config.dtype, conv_features=config.conv_features,
                        dense_features=config.dense_features, init=config.init)
    spec = RoundSpec(
        num_clients=config.num_clients, cohort_size=config.cohort_size,
        local_steps=config.local_steps, batch_size=config.batch_size,
        max_epochs=epochs_needed(int(counts_CK.sum(1).min()), config.local_steps,
                                 config.batch_size),
        pixel_scale=dataset.pixel_scale, chunk_size=1,   # the width: set below, from the layout
        momentum=config.momentum, weight_decay=config.weight_decay,
        augment=config.resolved_augment)
    algorithm = get_algorithm(config.algorithm)
    floor = memory_floor(config, model, algorithm, spec, dataset.x_train.shape[1:],
                         dataset.x_train.nbytes + dataset.x_test.nbytes, counts_CK)
    # The run alone, checked before its data goes to the device; a program of several runs
    # is laid out (and checked) again when it is built (program.build_program).
    spec = spec._replace(chunk_size=decide_layout(config, 1, floor).chunk)
    return Experiment(
        config=config, model=model, apply_fn=make_apply_fn(model), spec=spec,
        data=make_data(dataset.x_train, dataset.y_train, clients, dataset.num_classes),
        x_test=jnp.asarray(dataset.x_test), y_test=jnp.asarray(dataset.y_test),
        num_classes=dataset.num_classes, counts_CK=counts_CK,
        test_weights_CK=client_test_weights(counts_CK),
        algorithm=algorithm, floor=floor)


def memory_floor(config: Config, model, algorithm: Algorithm, spec: RoundSpec,
                 image_shape: tuple, image_bytes: int, counts_CK: np.ndarray) -> Floor:
    """The bytes a round of this experiment needs at least on one device (memory.Floor),
    from shapes alone: the server state is sized by jax.eval_shape, never built, so a model
    that cannot take the images fails here too, before any workdir is touched."""
    state = jax.eval_shape(lambda: init_state(
        model, jnp.zeros((1,) + image_shape, jnp.float32), config.seed, algorithm,
        hparams=hparams_of(config), num_clients=config.num_clients))
    max_examples = int(counts_CK.sum(1).max())
    data = image_bytes + 8 * int(counts_CK.sum()) + 4 * config.num_clients * max_examples
    activations = activation_bytes(model, {"params": state.params, **state.model_state},
                                   image_shape)
    per_client = client_round_bytes(image_shape, config.local_steps, config.batch_size,
                                    spec.max_epochs, max_examples, tree_bytes(state.params),
                                    activations)
    return Floor(data=data, state=tree_bytes(state), per_client=per_client, chunk=1)


def build_experiments(configs: list[Config]) -> list[Experiment]:
    """build_experiment for each config, where experiments with equal images or labels share
    one device array: a sweep over lr (or over seeds of a dataset with an official split)
    would otherwise hold one copy of the dataset per run on the device while it trains."""
    seen: dict[tuple, jax.Array] = {}

    def shared(array):
        host = np.asarray(array)
        key = (host.shape, host.dtype.str, hashlib.blake2b(host.tobytes(), digest_size=16).digest())
        return seen.setdefault(key, array)

    built = []
    for config in configs:
        exp = build_experiment(config)
        data = exp.data._replace(x=shared(exp.data.x), y=shared(exp.data.y))
        built.append(exp._replace(data=data, x_test=shared(exp.x_test), y_test=shared(exp.y_test)))
    return built


def hparams_of(config: Config) -> dict[str, jax.Array]:
    """The values a round reads as arrays (so runs differing only in them can be vmapped)."""
    hparams = {"lr": jnp.float32(config.lr), "server_lr": jnp.float32(config.resolved_server_lr),
               "momentum": jnp.float32(config.momentum),
               "weight_decay": jnp.float32(config.weight_decay)}
    for key in get_algorithm(config.algorithm).hparam_keys:
        hparams[key] = jnp.float32(getattr(config, key))
    return hparams


def initial_state(exp: Experiment) -> ServerState:
    sample_x = jnp.zeros((1,) + exp.data.x.shape[1:], jnp.float32)
    return init_state(exp.model, sample_x, exp.config.seed, exp.algorithm,
                      hparams=hparams_of(exp.config), num_clients=exp.config.num_clients)
