"""experiments/colab_tpu.ipynb: a valid notebook whose code cells run on CPU with tiny settings
(mock CIFAR-10), and whose re-run after a "restart" reuses the finished runs."""
import json
import os

import pytest

from fedln_jax.errors import FedlnError
from fedln_jax.studies import notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")


def load_notebook():
    with open(NOTEBOOK) as f:
        return json.load(f)


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_notebook_is_valid_nbformat_4():
    nb = load_notebook()
    try:
        import nbformat
    except ImportError:
        nbformat = None
    if nbformat is not None:
        nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert nb["metadata"]["accelerator"] == "TPU" and "kernelspec" in nb["metadata"]
    ids = [cell["id"] for cell in nb["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
        assert all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            compile(python_part(source(cell)), cell["id"], "exec")  # valid Python once shell lines go
    tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1


def python_part(text):
    """IPython shell (!) and magic (%) lines do not run outside IPython; the rest is Python."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("!", "%")))


def test_notebook_installs_shows_devices_runs_checkpoints_and_plots():
    text = "\n".join(source(c) for c in load_notebook()["cells"] if c["cell_type"] == "code")
    assert "git clone" in text and "pip install" in text
    for call in ("nb.show_devices()", "nb.prepare_workdir(", "nb.run_comparison(",
                 "nb.plot_comparison(", "paper_cifar10_one_class_cnn.py", "checkpoint_every="):
        assert call in text


def run_cells(parameters: str, namespace: dict) -> dict:
    for cell in load_notebook()["cells"]:
        if cell["cell_type"] != "code":
            continue
        code = parameters if "parameters" in cell["metadata"].get("tags", []) else source(cell)
        exec(compile(python_part(code), cell["id"], "exec"), namespace)
    return namespace


def test_notebook_cells_run_on_cpu_with_tiny_settings_and_resume(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    parameters = (
        f"REPO_DIR = {ROOT!r}\n"
        "CONFIG = f'{REPO_DIR}/experiments/configs/paper_cifar10_one_class_cnn.py'\n"
        f"WORKDIR = {str(tmp_path / 'work')!r}\n"
        f"DATA_DIR = {str(tmp_path / 'tfds')!r}\n"
        "NORMS = ('none', 'fn')\n"
        "OVERRIDES = ['rounds=2', 'eval_every=1', 'local_steps=1', 'batch_size=4', 'model=mlp',"
        " f'data_dir={DATA_DIR}']\n")
    with tfds.testing.mock_data(num_examples=100):
        first = run_cells(parameters, {})
        assert first["devices"]["device_count"] >= 1 and first["devices"]["backend"] == "cpu"
        summaries = first["summaries"]
        assert set(summaries) == {"none", "fn"}
        assert all(s["rounds_completed"] == 2 for s in summaries.values())
        assert os.path.getsize(first["png"]) > 1000
        config = json.loads((tmp_path / "work" / "fn" / "config.json").read_text())
        assert config["norm"] == "fn" and config["num_clients"] == 10 and config["rounds"] == 2
        rows = (tmp_path / "work" / "none" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["round"] for r in rows] == [1, 2]
        # "runtime restart": a fresh namespace runs every cell again; finished runs are reused
        before = {n: (tmp_path / "work" / n / "summary.json").read_text() for n in ("none", "fn")}
        second = run_cells(parameters, {})
        assert second["summaries"] == summaries
        assert {n: (tmp_path / "work" / n / "summary.json").read_text()
                for n in ("none", "fn")} == before
    out = capsys.readouterr().out
    assert "cpu device(s)" in out and "fn    final test accuracy" in out


def test_prepare_workdir_outside_colab(tmp_path):
    assert notebook.prepare_workdir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert notebook.prepare_workdir("gs://bucket/run") == "gs://bucket/run"
    if not os.path.isdir("/content/drive/MyDrive"):
        with pytest.raises(FedlnError, match="Google Drive, which can only be mounted in Colab"):
            notebook.prepare_workdir(str(tmp_path / "w"), "/content/drive/MyDrive/data")


def test_results_table():
    table = notebook.results_table({"fn": {"final_test_accuracy": 0.5, "best_test_accuracy": 0.75,
                                           "rounds_completed": 3}})
    assert table.splitlines()[1] == "fn     0.5000  0.7500  3"
