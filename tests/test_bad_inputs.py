"""Every malformed invocation in one table: exit 2, exactly one stderr line starting with
`error:`, no traceback, nothing created for a new workdir, an existing workdir byte-identical.

Add a new bad input as one row of CASES. Rows run in process through `cli.main` (fast); the
one that needs a real process (a config calling sys.exit at import) is a test of its own.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest

from fedln_jax.cli import main

TINY = ["dataset=synthetic", "num_clients=4", "classes_per_client=3", "local_steps=2",
        "batch_size=8", "rounds=4", "eval_every=2"]
TINY_DICT = ("dict(dataset='synthetic', num_clients=4, classes_per_client=3, local_steps=2, "
             "batch_size=8, rounds=4, eval_every=2)")



def tiny(*items):
    """TINY with some KEY=VALUE items replaced or added."""
    keys = {item.split("=")[0] for item in items}
    return [t for t in TINY if t.split("=")[0] not in keys] + list(items)


# Config files, by name; a row refers to one as {cfg:NAME}.
CONFIG_FILES = {
    "raises.py": "def get_config():\n    raise RuntimeError('boom')\n",
    "not_callable.py": "get_config = 3\n",
    "wrong_args.py": "def get_config(size):\n    return {}\n",
    "exits_in_get_config.py": "import sys\ndef get_config():\n    sys.exit(1)\n",
    "bad_syntax.py": "def get_config(:\n",
    "returns_list.py": "def get_config():\n    return [1]\n",
    "keys.txt": "rounds=4\nlr=0.1\n",        # KEY=VALUE lines: Python, but no get_config()
    "figure_runs_raise.py": f"def get_config():\n    return {TINY_DICT}\n"
                            "def get_runs():\n    raise KeyError('series')\n",
    "figure_runs_dict.py": f"def get_config():\n    return {TINY_DICT}\n"
                           "def get_runs():\n    return {'name': 'a'}\n",
    "figure_run_unnamed.py": f"def get_config():\n    return {TINY_DICT}\n"
                             "def get_runs():\n    return [{'series': 'a', 'overrides': {}}]\n",
    "figure_no_runs.py": f"def get_config():\n    return {TINY_DICT}\n",
}


def figure_config(figure="{}", runs="[{'name': 'a', 'series': 'a', 'x': 1, 'overrides': {}}]"):
    """A figure config on TINY with this FIGURE and these runs (Python source)."""
    return (f"def get_config():\n    return {TINY_DICT}\nFIGURE = {figure}\n"
            f"def get_runs():\n    return {runs}\n")


def one_run(**entry):
    """A get_runs() list of one run: name a, series a, x 1, no overrides, unless given."""
    return repr([{"name": "a", "series": "a", "x": 1, "overrides": {}, **entry}])


# Figure configs the schema refuses as a whole, before a run trains (figures.check_figure):
# (file name, FIGURE, runs, fragment of the error line).
FIGURE_SCHEMA = [
    ("fig_not_dict.py", "[('seeds', (0,))]", one_run(), "FIGURE must be a dict"),
    ("fig_unknown_option.py", "{'titel': 'x'}", one_run(), "unknown option(s) 'titel'"),
    ("fig_seeds_int.py", "{'seeds': 3}", one_run(), "seeds must be a non-empty list"),
    ("fig_seeds_empty.py", "{'seeds': ()}", one_run(), "seeds must be a non-empty list"),
    ("fig_seeds_twice.py", "{'seeds': (0, 0)}", one_run(), "repeat a seed"),
    ("fig_seeds_str.py", "{'seeds': ('0',)}", one_run(), "seeds must be ints"),
    ("fig_seeds_bool.py", "{'seeds': (True,)}", one_run(), "seeds must be ints"),
    ("fig_kind.py", "{'kind': 'bars'}", one_run(), "kind must be one of"),
    ("fig_xscale.py", "{'xscale': 'bogus'}", one_run(), "xscale must be one of"),
    ("fig_xscale_log_zero.py", "{'xscale': 'log'}", one_run(x=0), "cannot show x values"),
    ("fig_title_int.py", "{'title': 3}", one_run(), "title must be a string"),
    ("fig_caption_field.py", "{'caption': 'after {nope} rounds'}", one_run(), "does not render"),
    ("fig_caption_brace.py", "{'caption': 'after {rounds rounds'}", one_run(), "does not render"),
    ("fig_column_x.py", "{'column': '{x:.2f}'}", one_run(x="2-class"), "does not render"),
    ("fig_file_up.py", "{'figure_file': '../../x.png'}", one_run(), "figure_file must be"),
    ("fig_file_abs.py", "{'figure_file': '/tmp/x.png'}", one_run(), "figure_file must be"),
    ("fig_file_dir.py", "{'figure_file': 'missing/x.png'}", one_run(), "figure_file must be"),
    ("fig_file_results.py", "{'figure_file': 'results.json'}", one_run(), "figure_file must be"),
    ("fig_file_suffix.py", "{'figure_file': 'figure.txt'}", one_run(), "figure_file must be"),
    ("fig_analyze_list.py", "{'analyze': [0]}", one_run(), "analyze must be a dict"),
    ("fig_analyze_client.py", "{'analyze': {'client': '0'}}", one_run(), "analyze client"),
    ("fig_analyze_steps.py", "{'analyze': {'steps': 5}}", one_run(), "analyze steps"),
    ("fig_analyze_far.py", "{'analyze': {'client': 99}}", one_run(), "client 99 is out of range"),
    ("fig_run_up.py", "{}", one_run(name="../../x"), "must be a plain file name"),
    ("fig_run_sep.py", "{}", one_run(name="a/b"), "must be a plain file name"),
    ("fig_run_key.py", "{}", one_run(overide={}), "unknown key(s) 'overide'"),
    ("fig_series_list.py", "{}", one_run(series=["a"]), "series must be a string"),
    ("fig_x_list.py", "{}", one_run(x=[1]), "x must be a finite number"),
    ("fig_x_set.py", "{}", one_run(x={1}), "x must be a finite number"),
    ("fig_x_nan.py", "{}", one_run(x=float("nan")).replace("nan", "float('nan')"),
     "x must be a finite number"),
    ("fig_override_int_key.py", "{}", one_run(overrides={1: 2}), "override 1 is not a config key"),
    ("fig_override_unknown.py", "{}", one_run(overrides={"lrr": 0.1}), "'lrr' is not a config key"),
    ("fig_override_seed.py", "{}", one_run(overrides={"seed": 7}), "seed comes from FIGURE's seeds"),
    ("fig_same_cell.py", "{}", "[{'name': n, 'series': 's', 'x': 1, 'overrides': {}} "
                               "for n in ('a', 'b')]", "counted as one cell"),
]
CONFIG_FILES.update({name: figure_config(figure, runs) for name, figure, runs, _ in FIGURE_SCHEMA})

COORD = ["--num-processes", "2", "--process-id", "0", "--coordinator"]

# (id, argv with {wd} for the workdir and {cfg:NAME} for a config file, fragment of the
# error line, the workdirs to try it on). Workdir kinds: new (must not appear), run (a
# finished run, must stay byte-identical), and the special ones of `make_workdir`.
RUN = ["run", "--workdir", "{wd}", "--quiet"]
SWEEP = ["sweep", "--workdir", "{wd}", "--quiet"]
FIG = ["figure", "--workdir", "{wd}", "--quiet", "--config"]
BOTH = ("new", "run")
CASES = [
    # config files that cannot give a config
    ("config raises", RUN + ["--config", "{cfg:raises.py}"], "RuntimeError: boom", BOTH),
    ("config not callable", RUN + ["--config", "{cfg:not_callable.py}"], "not a function", BOTH),
    ("config wrong args", RUN + ["--config", "{cfg:wrong_args.py}"], "TypeError", BOTH),
    ("config sys.exit in get_config", RUN + ["--config", "{cfg:exits_in_get_config.py}"],
     "SystemExit", BOTH),
    ("config syntax error", RUN + ["--config", "{cfg:bad_syntax.py}"], "SyntaxError", BOTH),
    ("config returns a list", RUN + ["--config", "{cfg:returns_list.py}"],
     "must return a Config or a dict", BOTH),
    ("config .txt of KEY=VALUE", RUN + ["--config", "{cfg:keys.txt}"], "defines no get_config()", BOTH),
    ("config missing", RUN + ["--config", "{cfg:absent.py}"], "does not exist", BOTH),
    ("sweep config raises", SWEEP + ["--config", "{cfg:raises.py}", "seed=0,1"],
     "RuntimeError: boom", ("new",)),
    ("sweep config not callable", SWEEP + ["--config", "{cfg:not_callable.py}"],
     "not a function", ("new",)),
    ("sweep config .txt", SWEEP + ["--config", "{cfg:keys.txt}"], "defines no get_config()", ("new",)),
    ("figure config raises", FIG + ["{cfg:raises.py}"], "RuntimeError: boom", ("new",)),
    ("figure get_runs raises", FIG + ["{cfg:figure_runs_raise.py}"], "get_runs() in", ("new",)),
    ("figure get_runs not a list", FIG + ["{cfg:figure_runs_dict.py}"],
     "must return a non-empty list", ("new",)),
    ("figure run without a name", FIG + ["{cfg:figure_run_unnamed.py}"], "'name'", ("new",)),
    ("figure config without runs", FIG + ["{cfg:figure_no_runs.py}"], "defines no get_runs",
     ("new",)),
    *((f"figure schema: {name[4:-3]}", FIG + [f"{{cfg:{name}}}"], fragment, ("new",))
      for name, _, _, fragment in FIGURE_SCHEMA),
    # values
    ("seed 2**32", RUN + TINY + ["seed=4294967296"], "seed=4294967296 is too large: at most 4294967295", BOTH),
    ("seed negative", RUN + TINY + ["seed=-1"], "seed must be >= 0", BOTH),
    ("lr inf", RUN + TINY + ["lr=inf"], "lr must be a finite number", BOTH),
    ("lr 1e400", RUN + TINY + ["lr=1e400"], "lr must be a finite number", BOTH),
    ("lr nan", RUN + TINY + ["lr=nan"], "lr must be a finite number", BOTH),
    ("momentum inf", RUN + TINY + ["momentum=inf"], "momentum must be a finite number", BOTH),
    ("server_lr inf", RUN + TINY + ["server_lr=inf"], "server_lr must be a finite", BOTH),
    # checked once, in Config.validate (the library's guards are programmer errors)
    ("tau zero", RUN + TINY + ["tau=0"], "tau must be > 0", BOTH),
    ("gn_groups zero", RUN + TINY + ["norm=gn", "gn_groups=0"], "gn_groups must be >= 1", BOTH),
    ("dirichlet_beta zero", RUN + TINY + ["partition=dirichlet", "dirichlet_beta=0"],
     "dirichlet_beta must be > 0", BOTH),
    ("test_fraction one", RUN + TINY + ["test_fraction=1"], "test_fraction must be in", BOTH),
    ("key given twice", RUN + TINY + ["lr=0.1", "lr=0.2"], "'lr' is given twice", BOTH),
    ("empty optional value", RUN + TINY + ["clients_per_round="], "clients_per_round= has no value",
     BOTH),
    ("empty int value", RUN + TINY + ["gn_groups="], "gn_groups= has no value", BOTH),
    ("test_fraction 0.999", RUN + TINY + ["test_fraction=0.999"], "test_fraction must be in (0, 0.5]",
     BOTH),
    ("sweep impossible partition", SWEEP + TINY[:1] + ["num_clients=200", "classes_per_client=10",
                                                       "seed=0,1"], "client", ("new",)),
    ("sweep non-finite value", SWEEP + TINY + ["lr=0.1,inf"], "finite", ("new",)),
    # sizes no machine holds: refused up front (int32 bounds, the dataset's size, the
    # memory floor), in seconds, before a partition or an allocation of that size
    ("num_clients 2**31", RUN + tiny("num_clients=2147483648"), "at most 2147483647", BOTH),
    ("num_clients past the examples", RUN + tiny("num_clients=100000"),
     "training examples", ("new",)),
    ("batch_size 2**40", RUN + tiny("batch_size=1099511627776"), "batch_size=", BOTH),
    ("local_steps 2**40", RUN + tiny("local_steps=1099511627776"), "local_steps=", BOTH),
    ("steps x batch past int32", RUN + tiny("local_steps=65536", "batch_size=65536"),
     "local_steps x batch_size", ("new",)),
    ("client_chunk_size 2**40", RUN + tiny("client_chunk_size=1099511627776"),
     "client_chunk_size=", ("new",)),
    ("client_chunk_size past the cohort", RUN + tiny("client_chunk_size=5"),
     "wider than the 4 clients", ("new",)),
    ("batch past the device memory", RUN + tiny("batch_size=30000000", "local_steps=1"),
     "needs at least", ("new",)),
    ("conv widths past the device memory", RUN + tiny("conv_features=100000000/100000000"),
     "conv_features", ("new",)),
    ("model too deep for the images", RUN + tiny("model=cnn"), "smaller than", ("new",)),
    ("sweep model too deep for the images", SWEEP + tiny("model=cnn", "seed=0,1"),
     "smaller than", ("new",)),
    ("demo seeds 3e8", ["demo", "--workdir", "{wd}", "--quiet", "--seeds", "300000000"],
     "at most 100", ("new",)),
    ("demo rounds 2**40", ["demo", "--workdir", "{wd}", "--quiet", "--rounds", "1099511627776"],
     "--rounds", ("new",)),
    ("bench clients 3e8", ["bench", "--clients", "300000000"], "needs at least", ("none",)),
    ("bench batch 2**40", ["bench", "--batch-size", "1099511627776"], "--batch-size", ("none",)),
    ("bench steps x batch", ["bench", "--local-steps", "100000", "--batch-size", "100000"],
     "--local-steps x --batch-size", ("none",)),
    ("bench rounds 3e8", ["bench", "--rounds", "300000000"], "timed rounds", ("none",)),
    ("bench chunk past the clients", ["bench", "--clients", "4", "--chunk-size", "100000"],
     "wider than the 4 clients", ("none",)),
    ("sweep max runs 2**40", SWEEP + ["--max-runs-per-program", "1099511627776"]
     + tiny("seed=0,1"), "--max-runs-per-program", ("new",)),
    ("analyze steps 3e8", ["analyze", "--workdir", "{wd}", "--no-figures", "--steps",
                           "300000000"], "--steps 300000000 x batch_size", ("run",)),
    ("analyze steps 2**40", ["analyze", "--workdir", "{wd}", "--steps", "1099511627776"],
     "--steps", ("run",)),
    ("analyze client 3e8", ["analyze", "--workdir", "{wd}", "--no-figures", "--client",
                            "300000000"], "out of range", ("run",)),
    ("analyze client negative", ["analyze", "--workdir", "{wd}", "--client", "-1"],
     "--client", ("run",)),
    ("analyze steps past the device memory", ["analyze", "--workdir", "{wd}", "--no-figures",
                                              "--steps", "30000000"], "needs at least", ("run",)),
    # multi-process address
    ("coordinator without port", RUN + COORD + ["localhost"] + TINY, "HOST:PORT", BOTH),
    ("coordinator port not a number", RUN + COORD + ["host:abc"] + TINY, "HOST:PORT", BOTH),
    ("coordinator without host", RUN + COORD + [":1234"] + TINY, "HOST:PORT", BOTH),
    ("coordinator port too large", RUN + COORD + ["host:70000"] + TINY, "HOST:PORT", BOTH),
    # workdirs that cannot hold a run
    ("workdir empty", ["run", "--workdir", "", "--quiet"] + TINY, "workdir is empty", ("none",)),
    ("workdir is a file", RUN + TINY, "is a file", ("file",)),
    ("workdir under a file", RUN + TINY, "which is a file", ("under_file",)),
    ("demo workdir is a file", ["demo", "--workdir", "{wd}", "--quiet", "--rounds", "1"],
     "is a file", ("file",)),
    ("sweep workdir is a file", SWEEP + TINY + ["seed=0,1"], "is a file", ("file",)),
    ("workdir component too long", RUN + TINY, "path component", ("long_name",)),
    ("workdir path too long", RUN + TINY, "bytes long", ("long_path",)),
    ("workdir with [1]", RUN + TINY, "glob character", ("glob_brackets",)),
    ("workdir with **", RUN + TINY, "glob character", ("glob_stars",)),
    ("workdir with ?", RUN + TINY, "glob character", ("glob_question",)),
    ("workdir of other files", RUN + TINY, "does not hold a run", ("foreign",)),
    ("sweep into other files", SWEEP + TINY + ["seed=0,1"], "does not hold a sweep", ("foreign",)),
    ("figure into other files", FIG + ["{cfg:figure_ok.py}"], "does not hold a figure",
     ("foreign",)),
    ("figure into a sweep's workdir", FIG + ["{cfg:figure_ok.py}"], "holds a sweep (sweep.json)",
     ("sweep",)),
    ("results into a sweep's workdir", ["results", "--workdir", "{wd}", "rounds=2"],
     "holds a sweep (sweep.json)", ("sweep",)),
    ("workdir read-only", RUN + TINY, "not writable", ("read_only",)),
    ("finished run lost metrics.jsonl", RUN + TINY, "lacks the rows", ("run_without_metrics",)),
    ("other config on a finished run", RUN + TINY + ["lr=0.5"], "different config", ("run",)),
]
# Every size row must answer in seconds (the table's test times each row).
SECONDS_PER_ROW = 30


def tree(path):
    """Every directory and file below `path` (file bytes included), or None if absent."""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return open(path, "rb").read()
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), path)] = "<dir>"
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--workdir", str(workdir), "--quiet", *TINY]) == 0
    return workdir


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("configs")
    files = {**CONFIG_FILES, "figure_ok.py": (
        f"def get_config():\n    return {TINY_DICT}\n"
        "def get_runs():\n    return [{'name': 'a', 'series': 'a', 'overrides': {}}]\n")}
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def make_workdir(kind, tmp_path, finished_run):
    """(workdir argument, the path whose tree must not change, or that must not appear)."""
    if kind in ("new", "none"):
        return str(tmp_path / "new" / "run"), tmp_path / "new"
    if kind in ("run", "run_without_metrics", "read_only"):
        workdir = tmp_path / "run"
        shutil.copytree(finished_run, workdir)
        if kind == "run_without_metrics":
            os.remove(workdir / "metrics.jsonl")
        if kind == "read_only":
            if os.geteuid() == 0:
                pytest.skip("root writes into read-only directories")
            parent = tmp_path / "ro"
            parent.mkdir()
            parent.chmod(0o555)
            return str(parent / "run"), parent
        return str(workdir), workdir
    if kind in ("file", "under_file"):
        path = tmp_path / "a_file"
        path.write_text("not a directory\n")
        return str(path if kind == "file" else path / "run"), path
    if kind == "foreign":
        workdir = tmp_path / "mine"
        workdir.mkdir()
        (workdir / "notes.txt").write_text("someone's notes\n")
        return str(workdir), workdir
    if kind == "sweep":   # what a sweep leaves: its sweep.json, runs/ and results.md
        workdir = tmp_path / "sweep"
        (workdir / "runs").mkdir(parents=True)
        (workdir / "sweep.json").write_text('{"grid": {"seed": [0, 1]}}\n')
        (workdir / "results.md").write_text("| seed | final |\n")
        return str(workdir), workdir
    if kind == "long_name":
        return str(tmp_path / ("x" * 300)), tmp_path / ("x" * 300)
    if kind == "long_path":
        return str(tmp_path / "/".join(["d" * 200] * 25)), tmp_path / ("d" * 200)
    glob = {"glob_brackets": "run[1]", "glob_stars": "runs**", "glob_question": "run?"}[kind]
    return str(tmp_path / glob), tmp_path / glob


ROWS = [pytest.param(argv, fragment, kind, id=f"{name} ({kind})")
        for name, argv, fragment, kinds in CASES for kind in kinds]


@pytest.mark.parametrize("argv, fragment, kind", ROWS)
def test_bad_invocation(argv, fragment, kind, tmp_path, capsys, finished_run, config_dir):
    workdir, watched = make_workdir(kind, tmp_path, finished_run)
    before = tree(watched) if kind not in ("new", "none") else None
    cwd_before = sorted(os.listdir(os.getcwd()))
    args = [workdir if a == "{wd}" else
            str(config_dir / a[5:-1]) if a.startswith("{cfg:") else a for a in argv]
    capsys.readouterr()
    start = time.monotonic()
    try:
        code = main(args)
    finally:
        if kind == "read_only":
            watched.chmod(0o755)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert time.monotonic() - start < SECONDS_PER_ROW
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
    assert "Traceback" not in captured.err + captured.out
    assert tree(watched) == before                    # absent stays absent; existing unchanged
    assert sorted(os.listdir(os.getcwd())) == cwd_before   # nothing written where we stand


def test_config_calling_sys_exit_at_import_is_one_error_line(tmp_path):
    config = tmp_path / "exits.py"
    config.write_text("import sys\nsys.exit(0)\n")
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", "run", "--workdir",
                           str(tmp_path / "w"), "--config", str(config)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "SystemExit" in lines[0]
    assert not (tmp_path / "w").exists()


def test_a_python_config_with_a_txt_extension_loads(tmp_path):
    from fedln_jax.config import build_config
    path = tmp_path / "config.txt"
    path.write_text("def get_config():\n    return {'rounds': 3, 'lr': 0.05}\n")
    config = build_config(str(path), ["norm=fn"])
    assert (config.rounds, config.lr, config.norm) == (3, 0.05, "fn")


def test_the_seed_range_is_inclusive_of_its_top(capsys):
    from fedln_jax.config import MAX_SEED, Config
    assert Config(seed=MAX_SEED).validate().seed == 2**32 - 1


def test_a_finished_run_in_a_read_only_workdir_is_reported_not_written(tmp_path, capsys,
                                                                       finished_run):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    before = tree(workdir)
    modes = {}
    for root, dirs, files in os.walk(workdir):   # read-only for a non-root user
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[path] = os.stat(path).st_mode
    for path in sorted(modes, reverse=True) + [str(workdir)]:
        os.chmod(path, 0o555 if os.path.isdir(path) else 0o444)
    try:
        capsys.readouterr()
        assert main(["run", "--workdir", str(workdir), "--quiet", *TINY]) == 0
    finally:
        for path in [str(workdir)] + sorted(modes):
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    captured = capsys.readouterr()
    assert captured.err == "" and "final_test_accuracy" in captured.out
    assert tree(workdir) == before                   # not even a lock file


def test_out_of_memory_mid_run_is_one_line_and_resumes_with_a_narrower_chunk(tmp_path, capsys,
                                                                            monkeypatch):
    """An allocation failure after the checkpoint of round 4: exit 1, one line
    naming the knob, the checkpoint intact; the same command with client_chunk_size=1 resumes
    from it and finishes."""
    import jax

    from fedln_jax.training import checkpoint, train
    real_build = train.build_program

    def failing_build(members, devices):
        program = real_build(members, devices)

        def run_block(state, *args):
            if int(state.round) >= 4:
                raise jax.errors.JaxRuntimeError(
                    "RESOURCE_EXHAUSTED: Out of memory allocating 1379270266835700440 bytes.")
            return program.run_block(state, *args)
        return program._replace(run_block=run_block)

    workdir = str(tmp_path / "run")
    argv = ["run", "--workdir", workdir, "--quiet", *tiny("checkpoint_every=2", "rounds=6")]
    monkeypatch.setattr(train, "build_program", failing_build)
    capsys.readouterr()
    assert main(argv + ["client_chunk_size=4"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory"), lines
    assert "client_chunk_size (now 4" in lines[0] and "round 4 is intact" in lines[0]
    assert checkpoint.newest_step(workdir) == 4
    monkeypatch.setattr(train, "build_program", real_build)
    assert main(argv + ["client_chunk_size=1"]) == 0
    assert checkpoint.newest_step(workdir) == 6


def test_a_second_figure_on_one_workdir_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                               config_dir):
    from fedln_jax.training import lock
    workdir = tmp_path / "fig"
    with lock.hold([str(workdir)]):   # as a first `fedln-jax figure` still running
        capsys.readouterr()
        assert main(FIG[:2] + [str(workdir), "--quiet", "--config",
                               str(config_dir / "figure_ok.py")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by pid" in err[0] and err[0].startswith("error:")
    assert sorted(os.listdir(workdir)) == [lock.LOCK_NAME]   # no runs/, no results.json
