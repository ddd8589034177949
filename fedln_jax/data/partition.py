"""Label-skew partitions of a training set among clients, and the test-weighting helpers.

`partition(...)` returns one int64 array of indices into `labels` per client, sorted
ascending.  Schemes: `iid`, `n_class` (each client holds n classes), `dirichlet`.

Test accuracy protocol: the engine computes the global model's per-class recall on the whole
test set; client k's accuracy is `client_test_weights(counts)[k] @ recall`, i.e. accuracy on
a test set with the same class proportions as client k's training data; the reported number
is the unweighted mean over clients.
"""

from __future__ import annotations

import numbers

import numpy as np

from fedln_jax.errors import FedlnError


def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FedlnError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise FedlnError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_labels(labels, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise FedlnError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise FedlnError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FedlnError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


def partition(labels: np.ndarray, num_clients: int, *, scheme: str, num_classes: int,
              classes_per_client: int = 1, dirichlet_beta: float = 0.1, seed: int = 0,
              min_examples: int = 1, max_redraws: int = 100) -> list[np.ndarray]:
    """Split the examples with these `labels` among `num_clients` clients.

    Returns one sorted int64 index array (into `labels`) per client.

    - `iid`: a seeded shuffle cut into `num_clients` near-equal parts (sizes differ by <= 1).
    - `n_class`: client k holds classes `(k*n + j) % num_classes`, j = 0..n-1, with
      n = `classes_per_client` (n distinct classes, so n <= num_classes).  Each class's
      examples, in dataset order, are cut into as many contiguous near-equal chunks (sizes
      differ by <= 1; nothing is dropped) as there are clients holding it, and chunk i goes
      to the i-th such client in client order.  Every example of a held class is assigned
      exactly once.  If `num_clients * n < num_classes` some classes are held by no client
      and their examples are left unused.  A client that would receive an empty chunk
      (class with fewer examples than holders) raises FedlnError.  Deterministic; `seed`
      is unused.
    - `dirichlet`: for each class, its examples are shuffled, shares ~ Dir(beta * 1_K) are
      drawn and the class is cut at the cumulative shares (floor).  If any client ends with
      fewer than `min_examples` examples, the whole partition is redrawn with the next
      draws of the same seeded Generator, at most `max_redraws` times; then FedlnError.
      If `num_clients * min_examples` exceeds the number of examples, FedlnError at once.
    """
    num_classes = _int_arg("num_classes", num_classes, 1)
    num_clients = _int_arg("num_clients", num_clients, 1)
    labels = _check_labels(labels, num_classes)
    if scheme not in _SCHEMES:
        raise FedlnError(f"unknown partition scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")
    parts = _SCHEMES[scheme](labels, num_clients, num_classes, classes_per_client=classes_per_client,
                             dirichlet_beta=dirichlet_beta, seed=seed, min_examples=min_examples,
                             max_redraws=max_redraws)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# Each scheme takes (labels, num_clients, num_classes, **the options of `partition`) and
# reads the options it needs.

def _scheme_iid(labels, num_clients, num_classes, *, seed, **_):
    return _iid(labels.size, num_clients, seed)


def _scheme_n_class(labels, num_clients, num_classes, *, classes_per_client, **_):
    n = _int_arg("classes_per_client", classes_per_client, 1)
    if n > num_classes:
        raise FedlnError(f"classes_per_client={n} exceeds num_classes={num_classes}")
    return _n_class(labels, num_clients, n, num_classes)


def _scheme_dirichlet(labels, num_clients, num_classes, *, dirichlet_beta, seed, min_examples,
                      max_redraws, **_):
    return _dirichlet(labels, num_clients, num_classes, dirichlet_beta, seed,
                      _int_arg("min_examples", min_examples, 0), _int_arg("max_redraws", max_redraws, 0))


# The partition registry: scheme name -> scheme function (a new scheme is one entry).
_SCHEMES = {"iid": _scheme_iid, "n_class": _scheme_n_class, "dirichlet": _scheme_dirichlet}
SCHEMES = tuple(_SCHEMES)


def _iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    if n < num_clients:
        raise FedlnError(f"cannot split {n} examples among {num_clients} clients (iid)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.array_split(perm, num_clients)


def _n_class(labels: np.ndarray, num_clients: int, n: int, num_classes: int) -> list[np.ndarray]:
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for k in range(num_clients):
        for j in range(n):
            holders[(k * n + j) % num_classes].append(k)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, hs in enumerate(holders):
        if not hs:
            continue
        idx = np.flatnonzero(labels == c)
        if idx.size < len(hs):
            raise FedlnError(
                f"class {c} has {idx.size} examples but is held by {len(hs)} clients "
                f"(n_class, {num_clients} clients x {n} classes); use fewer clients")
        for k, chunk in zip(hs, np.array_split(idx, len(hs))):
            parts[k].append(chunk)
    return [np.concatenate(p) for p in parts]


def _dirichlet(labels: np.ndarray, num_clients: int, num_classes: int, beta, seed: int,
               min_examples: int, max_redraws: int) -> list[np.ndarray]:
    # A programmer-error guard: the user's dirichlet_beta is checked once, in Config.validate.
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"dirichlet_beta must be a positive number, got {beta!r}")
    asked = (f"{num_clients} clients, beta={beta:g}, min_examples={min_examples}, "
             f"{labels.size} examples")
    if num_clients * min_examples > labels.size:
        raise FedlnError(f"dirichlet partition impossible: {asked}; use fewer clients or a smaller min_examples")
    rng = np.random.default_rng(seed)
    class_idx = [np.flatnonzero(labels == c) for c in range(num_classes)]
    alpha = np.full(num_clients, beta)
    for _ in range(max_redraws + 1):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in class_idx:
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)
            shares = rng.dirichlet(alpha)
            cuts = np.floor(np.cumsum(shares)[:-1] * idx.size).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, np.clip(cuts, 0, idx.size))):
                parts[k].append(chunk)
        merged = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
        if min(m.size for m in merged) >= min_examples:
            return merged
    raise FedlnError(
        f"dirichlet partition left a client with fewer than {min_examples} examples after "
        f"{max_redraws} redraws ({asked}); use a larger beta or fewer clients")


def class_counts(labels, client_indices, num_classes: int) -> np.ndarray:
    """int64 [num_clients, num_classes]: how many examples of each class each client holds."""
    num_classes = _int_arg("num_classes", num_classes, 1)
    labels = _check_labels(labels, num_classes)
    out = np.zeros((len(client_indices), num_classes), dtype=np.int64)
    for k, idx in enumerate(client_indices):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= labels.size):
            raise FedlnError(f"client {k} has indices outside [0, {labels.size})")
        out[k] = np.bincount(labels[idx], minlength=num_classes)
    return out


def client_test_weights(counts: np.ndarray) -> np.ndarray:
    """float32 [num_clients, num_classes]: each client's train class proportions (rows sum to 1).

    Client k's test accuracy is `weights[k] @ per_class_recall` (see module docstring).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise FedlnError(f"counts must be a 2-D [clients, classes] array, got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise FedlnError("counts must be non-negative")
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    empty = np.flatnonzero(totals[:, 0] == 0)
    if empty.size:
        raise FedlnError(f"client {int(empty[0])} has no training examples")
    return (counts / totals).astype(np.float32)


def format_class_counts(counts_CK: np.ndarray) -> str:
    """The client x class table printed at the start of a one-run program."""
    lines = ["client  n     examples per class"]
    for c, row in enumerate(counts_CK):
        lines.append(f"{c:>6}  {int(row.sum()):<5} {' '.join(f'{int(v):>4}' for v in row)}")
    return "\n".join(lines)
