"""What the Colab TPU notebook (experiments/colab_tpu.ipynb) does, as plain functions.

The notebook's cells are one-line calls into this module, so a test can run them on a CPU
with tiny settings.  A comparison is one run per normalizer in `<workdir>/<norm>`, trained
like a figure's runs (`figures.train_runs`): a finished run is reused; the others are ordinary
runs (one program per normalizer), which lay the clients out over every device (the TPU
cores) and, on a workdir holding checkpoints, resume from the latest one, so re-running the
cells after a runtime restart continues where the runs stopped.  Workdirs may be local, on a
mounted Google Drive (/content/drive/...), or gs:// buckets.
"""
from __future__ import annotations

import os
import tempfile

from fedln_jax.config import Config, build_config
from fedln_jax.engine.placement import client_mesh
from fedln_jax.errors import FedlnError
from fedln_jax.models import NORM_PRESETS
from fedln_jax.runtime.environment import fallback_warning
from fedln_jax.studies.figures import train_runs
from fedln_jax.studies.plots import plot_accuracy_curves
from fedln_jax.studies.results import runs_table
from fedln_jax.training.workdir import read_metrics

NORMS = tuple(NORM_PRESETS)   # a comparison runs every normalizer preset unless told otherwise
DRIVE_ROOT = "/content/drive"


def _path(path: str):
    from etils import epath   # local paths and gs:// alike
    return epath.Path(path)


def device_summary() -> dict:
    """Backend, devices, and how the clients axis is laid out over them."""
    import jax

    mesh = client_mesh()
    return {"backend": jax.default_backend(), "device_count": jax.device_count(),
            "process_count": jax.process_count(),
            "devices": [str(d) for d in jax.devices()],
            "client_mesh": dict(zip(mesh.axis_names, mesh.devices.shape))}


def show_devices() -> dict:
    info = device_summary()
    print(f"{info['device_count']} {info['backend']} device(s) in {info['process_count']} "
          f"process(es); clients are sharded over mesh axes {info['client_mesh']}")
    for device in info["devices"]:
        print(" ", device)
    warning = fallback_warning()   # a TPU runtime whose libtpu did not load trains on the CPU
    if warning:
        print(warning)
    return info


def prepare_workdir(workdir: str, data_dir: str = "") -> str:
    """Mount Google Drive if the workdir or data_dir lives there (in Colab); create the local
    workdir folder (gs:// needs none). Returns the workdir."""
    on_drive = [p for p in (workdir, data_dir) if p.startswith(DRIVE_ROOT + "/")]
    if on_drive and not os.path.isdir(os.path.join(DRIVE_ROOT, "MyDrive")):
        try:
            from google.colab import drive
        except ImportError:
            raise FedlnError(f"{on_drive[0]} is on Google Drive, which can only be mounted in "
                             f"Colab; use a local or gs:// path") from None
        drive.mount(DRIVE_ROOT)
    if not workdir.startswith("gs://"):
        os.makedirs(workdir, exist_ok=True)
    return workdir


def comparison_configs(config_path: str, norms=NORMS, overrides=()) -> dict[str, Config]:
    """One validated Config per normalizer: the config file, the overrides, then `norm=`."""
    return {norm: build_config(config_path, [*overrides, f"norm={norm}"]) for norm in norms}


def run_comparison(config_path: str, workdir: str, *, norms=NORMS, overrides=(),
                   quiet: bool = False) -> dict[str, dict]:
    """Run every normalizer's experiment in workdir/<norm>, finished ones skipped; returns
    norm -> summary.  Interrupted runs resume from their latest checkpoint (train.run_group)."""
    configs = comparison_configs(config_path, norms, overrides)
    summaries = dict(zip(configs, train_runs(list(configs.values()),
                                             [str(_path(workdir) / norm) for norm in configs],
                                             quiet=quiet)))
    if not quiet:
        for norm, summary in summaries.items():
            print(f"{norm:<5} final test accuracy {summary['final_test_accuracy']:.4f} "
                  f"after {summary['rounds_completed']} rounds")
    return summaries


def load_curves(workdir: str, norms=NORMS) -> dict[str, list[dict]]:
    """norm -> the metrics.jsonl rows of workdir/<norm>."""
    curves = {}
    for norm in norms:
        curves[norm] = read_metrics(str(_path(workdir) / norm))
    return curves


def plot_comparison(workdir: str, norms=NORMS, title: str = "") -> str:
    """Test accuracy vs round, one line per normalizer; saved as workdir/accuracy.png."""
    curves = {norm: [rows] for norm, rows in load_curves(workdir, norms).items()}
    target = _path(workdir) / "accuracy.png"
    with tempfile.TemporaryDirectory() as tmp:   # matplotlib writes locally; copy to gs:// too
        local = os.path.join(tmp, "accuracy.png")
        plot_accuracy_curves(curves, local, title=title)
        with open(local, "rb") as f:
            target.write_bytes(f.read())
    return str(target)


# The notebook's last cell prints this: one row per normalizer (final, best, rounds done).
results_table = runs_table


def show_image(path: str) -> None:
    """Display a PNG (local or gs://) inline in a notebook; print its path elsewhere."""
    data = _path(path).read_bytes()
    try:
        from IPython.display import Image, display
    except ImportError:
        print(f"{path} ({len(data)} bytes)")
        return
    display(Image(data=data))
