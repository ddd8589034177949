"""`fedln-jax results`: the page regenerated end to end on a tiny setting (two figures, two
rounds, into a temporary page), runs shared between figures and reused on the next
invocation, bad input refused before anything is written."""
import json
import os
import re
import shutil

import pytest

from fedln_jax import cli, regenerate, results_page
from fedln_jax.errors import FedlnError
from fedln_jax.results_page import Section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ('from fedln_jax import Config\n'
        'def get_config():\n'
        '    return Config(dataset="synthetic", model="mlp", dense_features="8/8", num_clients=2,\n'
        '                  local_steps=1, batch_size=4, rounds=3, eval_every=1)\n')
# Two figures sharing their none and ln runs: the headline (seeds table) and a split comparison (grid).
HEADLINE = BASE + ('FIGURE = {"kind": "curves", "seeds": (0,), "table": "seeds", "row_label": "norm",\n'
                   '          "analyze": {"client": 0, "steps": (1,)}}\n'
                   'def get_runs():\n'
                   '    return [{"name": n, "series": n, "x": None, "overrides": {"norm": n}}\n'
                   '            for n in ("none", "ln")]\n')
SKEW = BASE + ('FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "split"}\n'
               'def get_runs():\n'
               '    return [{"name": f"{n}_{c}", "series": n, "x": f"{c}-class",\n'
               '             "overrides": {"norm": n, "classes_per_client": c}}\n'
               '            for n in ("none", "ln") for c in (1, 2)]\n')
SECTIONS = (Section("demo", "headline.py", "Group A", "Headline", "About the headline.",
                    results_page.headline_notes, image="demo_accuracy.png"),
            Section("skew", "skew.py", "Group B", "Skew", "About the skew.", results_page.skew_notes))


@pytest.fixture()
def configs(tmp_path):
    root = tmp_path / "configs"
    root.mkdir()
    (root / "headline.py").write_text(HEADLINE)
    (root / "skew.py").write_text(SKEW)
    return str(root)


def test_the_page_is_regenerated_from_the_runs_it_made(tmp_path, configs, capsys):
    work, out = str(tmp_path / "work"), str(tmp_path / "page" / "results.md")
    regenerate.regenerate(work, out, sections=SECTIONS, config_root=configs,
                          overrides=["rounds=2"], command="fedln-jax results (test)")
    err = capsys.readouterr().err
    assert "[1/2] demo (headline.py)" in err and "[2/2] skew (skew.py)" in err
    assert "this invocation" in err and "all invocations of this workdir" in err
    page = open(out).read()
    assert "<!-- SECTIONS -->" not in page and "<!-- HEADER -->" not in page
    assert "by `fedln-jax results (test)`" in page and "Python " in page and "jax " in page
    assert "Wall time: " in page and "over 1 invocation(s)" in page
    assert page.index("## Group A") < page.index("### Headline") < page.index("## Group B")
    assert "Model: `mlp` (hidden 8/8)." in page and "2 rounds" in page
    # The tables are the figures' own, and the numbers in the sentences come from them.
    for name, table in (("demo", "table.txt"), ("skew", "table.md")):
        text = open(os.path.join(work, "figures", name, table)).read().strip()
        assert text in page
    headline = json.load(open(os.path.join(work, "figures", "demo", "results.json")))
    ln, none = headline["table"]["ln"]["last3_mean"], headline["table"]["none"]["last3_mean"]
    assert f"ln - none {ln - none:+.3f}" in page
    assert "final test accuracy after 2 rounds, seeds [0]" in page   # the demo table example
    # A figure with `analyze` writes its spectra into its own directory (no runs under it).
    assert os.path.exists(os.path.join(work, "figures", "demo", "singular_values.png"))
    for image in ("demo_accuracy.png", "skew.png"):
        assert os.path.exists(tmp_path / "page" / "figures" / image)
        assert f"(figures/{image})" in page
    # The none and ln 1-class runs are the headline's: 2 + 4 runs, 4 distinct configs.
    runs = sorted(os.listdir(os.path.join(work, "runs")))
    assert len(runs) == 4 and all(r.startswith("synthetic_") for r in runs)


def test_a_second_invocation_reuses_every_run(tmp_path, configs, capsys):
    work, out = str(tmp_path / "work"), str(tmp_path / "results.md")
    kw = dict(sections=SECTIONS, config_root=configs, overrides=["rounds=2"])
    regenerate.regenerate(work, out, **kw)
    summaries = {r: os.path.getmtime(os.path.join(work, "runs", r, "summary.json"))
                 for r in os.listdir(os.path.join(work, "runs"))}
    shutil.rmtree(os.path.join(work, "figures", "skew"))   # as if killed before this figure
    regenerate.regenerate(work, out, only="skew", **kw)
    assert summaries == {r: os.path.getmtime(os.path.join(work, "runs", r, "summary.json"))
                         for r in os.listdir(os.path.join(work, "runs"))}
    ledger = json.load(open(os.path.join(work, "regenerate.json")))
    assert [e["figures"] for e in ledger["invocations"]] == [["demo", "skew"], ["skew"]]
    page = open(out).read()
    assert "over 2 invocation(s)" in page and "### Skew" in page and "not regenerated" not in page


def test_a_section_without_results_is_marked_not_regenerated(tmp_path, configs):
    out = str(tmp_path / "results.md")
    regenerate.regenerate(str(tmp_path / "w"), out, sections=SECTIONS, config_root=configs,
                          only="demo", overrides=["rounds=2"])
    page = open(out).read()
    assert page.count("not regenerated yet") == 1 and "### Skew" in page


def test_bad_input_is_refused_before_anything_is_written(tmp_path, configs, capsys):
    work = tmp_path / "w"
    with pytest.raises(FedlnError, match="not a section"):
        regenerate.regenerate(str(work), sections=SECTIONS, config_root=configs, only="nope")
    with pytest.raises(FedlnError, match="no figure config"):
        regenerate.regenerate(str(work), sections=SECTIONS, config_root=str(tmp_path))
    assert not work.exists()
    assert cli.main(["results", "--workdir", str(work), "--only", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --only 'nope'")
    assert not work.exists()
    bad = [(dict(only=""), "--only ''"), (dict(overrides=["rounds=0"]), "rounds must be >= 1"),
           (dict(overrides=["seed=1"]), "seed does not apply to a figure"),
           (dict(out=str(tmp_path / "a_file" / "page.md")), "cannot be made"),
           (dict(out=str(tmp_path)), "must name a file")]
    (tmp_path / "a_file").write_text("")
    for kwargs, message in bad:   # each refused before a progress line or a file
        with pytest.raises(FedlnError, match=message):
            regenerate.regenerate(str(work), sections=SECTIONS, config_root=configs, **kwargs)
        assert capsys.readouterr().err == "" and not work.exists()


def test_the_page_names_a_figure_config_that_exists_for_every_section():
    names = [s.name for s in results_page.PAGE]
    assert len(set(names)) == len(names)
    loaded = regenerate.load_sections(results_page.PAGE, regenerate.configs_dir())
    assert set(loaded) == set(names)
    assert loaded["mnist5k_headline"].base.dataset == "mnist5k"


def test_the_readme_demo_table_is_the_pages():
    """The README copies the demo's table from docs/results.md, which `fedln-jax results`
    writes: the numbers of each row must agree."""
    number = r"\d\.\d{3}"
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        block = f.read().split("### Headline (the demo)")[1].split("```")[1]
    page = {line.split()[0]: re.findall(number, line) for line in block.splitlines()
            if line.split() and line.split()[0] in ("none", "ln", "fn")}
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = {cells[1].strip(): re.findall(number, line) for line in f
                  if (cells := line.split("|"))[0] == "" and len(cells) > 2
                  and cells[1].strip() in ("none", "ln", "fn")}
    assert set(page) == {"none", "ln", "fn"} and all(len(v) == 6 for v in page.values())
    assert readme == page


def test_a_run_has_the_same_bits_whichever_figure_trains_it(tmp_path):
    """The runs axis is part of the layout: a figure trains every run as its own program, so
    seed 1 trained beside seed 0 equals seed 1 trained alone, to the bit."""
    from fedln_jax import figures
    config = tmp_path / "two_seeds.py"
    cnn = BASE.replace('model="mlp", dense_features="8/8"', 'model="small_cnn", conv_features="4/8", '
                       'dense_features="16/8"').replace("local_steps=1", "local_steps=3")
    config.write_text(cnn + ('FIGURE = {"kind": "curves", "seeds": (0, 1), "table": "seeds"}\n'
                              'def get_runs():\n'
                              '    return [{"name": "fn", "series": "fn", "x": None,\n'
                              '             "overrides": {"norm": "fn"}}]\n'))
    both = figures.run_figure(str(config), str(tmp_path / "both"), quiet=True)
    alone = figures.run_figure(str(config), str(tmp_path / "alone"), seeds=(1,), quiet=True)
    pick = lambda result: next(r for r in result["runs"] if r["seed"] == 1)
    def rows(result):   # every metric but the wall clock
        lines = open(os.path.join(pick(result)["workdir"], "metrics.jsonl")).read().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"}
                for line in lines]
    assert rows(both) == rows(alone) and len(rows(both)) == 3
    assert pick(both)["final"] == pick(alone)["final"]
