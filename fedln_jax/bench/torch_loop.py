"""The PyTorch alternatives of `fedln-jax bench --protocol paper`, on the same device.

torch is a benchmark-only extra (`pip install -e '.[bench]'`): this module imports it inside
its functions, so the package imports and its tests pass without it (`available()` says
whether it can run). Two ways a PyTorch user trains the paper's round (docs/benchmarks.md):

- torch_loop: the reference code's way, one client after another: `copy.deepcopy` of the
  global model, K SGD steps on batches drawn from a fresh shuffle of its examples, then the
  example-weighted mean of the clients' state dicts is loaded into the global model (as
  benchmarks/vs_torch.py does on the CPU; the loss is not read back every step, so a GPU is
  not synchronized inside the round).
- torch_func: the strongest PyTorch form of the vectorized round: the clients' parameters
  stacked on a leading axis and trained together with `torch.func` (functional_call inside
  vmap(grad_and_value)), K steps, then the weighted mean over the client axis.

Both use the paper CNN without biases (the same layers and widths as fedln's `cnn`), float32,
uint8 images held on the device and scaled to [0, 1] per batch, SGD at lr 0.01.
"""
from __future__ import annotations

import importlib.util
import statistics
import time

from fedln_jax.bench.report import TORCH_IMPLS as IMPLS, time_calls

LR = 0.01


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def device_name() -> str:
    import torch
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def torch_version() -> str:
    import torch
    return torch.__version__


def paper_cnn(sizes):
    """conv5x5(64)-relu-pool, conv5x5(64)-relu-pool, dense 384, 192, head 10, no biases (at
    the paper's sizes; the widths and image side of `sizes`, a protocol.Sizes)."""
    from torch import nn
    c1, c2 = (int(w) for w in (sizes.conv_features or "64/64").split("/"))
    d1, d2 = (int(w) for w in (sizes.dense_features or "384/192").split("/"))
    flat = ((sizes.side - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(3, c1, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * flat * flat, d1, bias=False), nn.ReLU(),
        nn.Linear(d1, d2, bias=False), nn.ReLU(), nn.Linear(d2, 10, bias=False))


def _setup(cohort: int, images_per_client: int, side: int):
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True      # the tuned conv algorithms, as a user would
    torch.manual_seed(0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x_u8 = torch.randint(0, 256, (cohort, images_per_client, 3, side, side), dtype=torch.uint8,
                         generator=gen).to(device)
    y = (torch.arange(cohort) % 10)[:, None].expand(cohort, images_per_client).contiguous().to(device)
    return torch, device, x_u8, y


def _batch_indices(torch, device, cohort: int, images_per_client: int, steps: int, batch: int):
    """[cohort, steps * batch] example indices: fresh shuffles, as many epochs as needed."""
    epochs = -(-steps * batch // images_per_client)
    orders = [torch.argsort(torch.rand(cohort, images_per_client, device=device), dim=1)
              for _ in range(epochs)]
    return torch.cat(orders, dim=1)[:, :steps * batch]


def loop_round_fn(cohort: int, images_per_client: int, sizes):
    import copy

    torch, device, x_u8, y = _setup(cohort, images_per_client, sizes.side)
    import torch.nn.functional as F
    global_model = paper_cnn(sizes).to(device)
    steps, batch = sizes.local_steps, sizes.batch_size

    def one_round():
        index = _batch_indices(torch, device, cohort, images_per_client, steps, batch)
        avg, loss = None, None
        for c in range(cohort):
            model = copy.deepcopy(global_model)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            for s in range(steps):
                ix = index[c, s * batch:(s + 1) * batch]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x_u8[c, ix].float() / 255), y[c, ix])
                loss.backward()
                opt.step()
            with torch.no_grad():
                state = model.state_dict()
                if avg is None:
                    avg = {k: v / cohort for k, v in state.items()}
                else:
                    for k, v in state.items():
                        avg[k].add_(v, alpha=1 / cohort)
        global_model.load_state_dict(avg)
        return loss

    return torch, device, one_round


def func_round_fn(cohort: int, images_per_client: int, sizes):
    torch, device, x_u8, y = _setup(cohort, images_per_client, sizes.side)
    import torch.nn.functional as F
    from torch.func import functional_call, grad_and_value, vmap
    model = paper_cnn(sizes).to(device)
    steps, batch = sizes.local_steps, sizes.batch_size
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss_fn(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    client_grads = vmap(grad_and_value(loss_fn))     # over the stacked clients
    clients = torch.arange(cohort, device=device)[:, None]

    def one_round():
        nonlocal params
        index = _batch_indices(torch, device, cohort, images_per_client, steps, batch)
        stacked = {k: v.expand(cohort, *v.shape).clone() for k, v in params.items()}
        loss = None
        for s in range(steps):
            ix = index[:, s * batch:(s + 1) * batch]
            grads, loss = client_grads(stacked, x_u8[clients, ix].float() / 255, y[clients, ix])
            stacked = {k: v - LR * grads[k] for k, v in stacked.items()}
        params = {k: v.mean(0) for k, v in stacked.items()}   # equal client sizes
        return loss.mean()

    return torch, device, one_round


def time_torch(impl: str, cohort: int, images_per_client: int, sizes) -> dict:
    """The measured part of a row for one PyTorch implementation, timed as the JAX rows are
    (report.time_calls)."""
    build = loop_round_fn if impl == "torch_loop" else func_round_fn
    torch, device, one_round = build(cohort, images_per_client, sizes)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def call(n):
        start = time.perf_counter()
        for _ in range(n):
            loss = one_round()
        sync()
        return float(loss.detach()), time.perf_counter() - start

    results, first, n = time_calls(call, sizes)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    return {"compile_seconds": None, "first_round_seconds": first, "rounds_per_call": n,
            "calls": sizes.calls, "round_seconds_median": statistics.median(t for _, t in results) / n,
            "train_loss": results[-1][0], "program_memory_mb": None, "torch_peak_mb": peak,
            "torch_device": device_name(), "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads()}
