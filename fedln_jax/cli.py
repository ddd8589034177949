"""Console script `fedln-jax`: run | demo | sweep | bench | analyze | figure | results | config | info. Bad input: one `error:` line on stderr, exit 2.
A file-system fault under a running run (disk full, I/O error) or out of memory: one `error:` line, exit 1."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from fedln_jax.choices import DTYPES, ENGINES, INPUT_SHAPES, NORM_PRESET_NAMES
from fedln_jax.config_help import keys_help
from fedln_jax.config_keys import INT32_MAX
from fedln_jax.errors import DivergedError, FedlnError, Interrupted, OutOfMemory, StorageError

# The demo trains none, ln and fn over its seeds; a study of more seeds is a sweep.
MAX_DEMO_SEEDS = 100


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors."""

    def error(self, message):  # argparse's default prints usage over several lines
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedln-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # run/sweep/config --help end with every config key (from its declaration, config_keys.py)
    keys = dict(epilog=keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run_p = sub.add_parser("run", help="run one experiment", **keys)
    run_p.add_argument("--workdir", required=True)
    run_p.add_argument("--config", help="Python file defining get_config()")
    run_p.add_argument("--quiet", action="store_true", help="no progress bar or logs")
    run_p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sweep_p = sub.add_parser("sweep", help="run a grid; runs differing only in values are vectorized",
                             **keys)
    sweep_p.add_argument("--workdir", required=True)
    sweep_p.add_argument("--config", help="Python file defining get_config() (the grid's base)")
    sweep_p.add_argument("--quiet", action="store_true")
    sweep_p.add_argument("--dry-run", action="store_true",
                         help="check that every run can be built, print the programs, write nothing")
    sweep_p.add_argument("--max-runs-per-program", type=int, metavar="R",
                         help="stack at most R runs in one vectorized program (memory grows "
                              "with R); default: all runs that can share one")
    sweep_p.add_argument("grid", nargs="*", metavar="KEY=V1,V2,...")
    for p in (run_p, sweep_p):
        group = p.add_argument_group("multi-host (see fedln_jax/runtime/distributed.py)")
        group.add_argument("--coordinator", help="HOST:PORT of process 0 (env FEDLN_COORDINATOR)")
        group.add_argument("--num-processes", type=int, help="env FEDLN_NUM_PROCESSES")
        group.add_argument("--process-id", type=int, help="env FEDLN_PROCESS_ID")
        group.add_argument("--distributed", action="store_true",
                           help="jax.distributed.initialize() with auto-detection (TPU slices; "
                                "env FEDLN_DISTRIBUTED=1)")
    demo_p = sub.add_parser("demo", help="the headline comparison on the embedded digits")
    demo_p.add_argument("--workdir", default="fedln_demo")
    demo_p.add_argument("--rounds", type=int, default=200)   # fedln_jax.studies.demo.DEMO_ROUNDS
    demo_p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    demo_p.add_argument("--quiet", action="store_true")
    bench_p = sub.add_parser("bench", help="time rounds on synthetic data; prints one JSON object")
    bench_p.add_argument("--model", default="cnn", choices=tuple(INPUT_SHAPES),
                         help="cnn = paper CNN on 32x32x3, small_cnn = digits CNN on 8x8x1")
    bench_p.add_argument("--conv-features", default="", metavar="W1/W2",
                         help="conv widths of cnn/small_cnn (the config key conv_features)")
    bench_p.add_argument("--dense-features", default="", metavar="W1/W2",
                         help="hidden dense widths (the config key dense_features)")
    bench_p.add_argument("--clients", type=int, default=10)
    bench_p.add_argument("--local-steps", type=int, default=5)
    bench_p.add_argument("--batch-size", type=int, default=32)
    bench_p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    bench_p.add_argument("--engine", default="vectorized", choices=ENGINES)
    bench_p.add_argument("--chunk-size", type=int, default=0,
                         help="clients vmapped together per device; 0 = backend default")
    bench_p.add_argument("--chunk-policy",
                         help="with --chunk-size 0: auto = backend default (the default), narrow = "
                              "1 client per device (CPU default), cohort = all per device (GPU/TPU "
                              "default); with --protocol a list (default cohort,narrow; or widths)")
    bench_p.add_argument("--conv-impl",
                         help="conv formulation: auto (backend default; the default), patches, lax, "
                              "torch (PyTorch's CPU convs, docs/install.md#torch-convs); with "
                              "--protocol a list (default lax,patches)")
    bench_p.add_argument("--norm", default="none", choices=NORM_PRESET_NAMES)
    bench_p.add_argument("--dtype", help=f"{' or '.join(DTYPES)} (default float32); with "
                                         "--protocol a list (default float32,bfloat16)")
    proto = bench_p.add_argument_group("the paper's protocol timed (docs/benchmarks.md)")
    proto.add_argument("--protocol", choices=("paper",),
                       help="time the paper CNN's 10 clients x 10 steps x batch 32 round over a "
                            "grid of configurations; prints JSON lines and a markdown table")
    proto.add_argument("--quick", action="store_true", help="every configuration at a tiny size")
    proto.add_argument("--runs", metavar="R1,R2", help="runs trained as one program (default 1,8,64)")
    proto.add_argument("--cohort", metavar="C1,C2", help="clients per round (default 10,100)")
    proto.add_argument("--out", metavar="FILE.jsonl",
                       help="write each row as it finishes, and the table to FILE.md")
    proto.add_argument("--budget", type=float, metavar="SECONDS",
                       help="skip the configurations left once this much time is spent")
    proto.add_argument("--config-limit", type=float, metavar="SECONDS",
                       help="skip a configuration whose rounds would take longer than this")
    proto.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    bench_p.add_argument("--rounds-per-call", type=int, default=1,
                         help="rounds fused into one jitted call (vectorized engine)")
    an_p = sub.add_parser("analyze", help="feature norms, singular values, per-class recall "
                          "and the local-overfit probe of a finished run")
    an_p.add_argument("--workdir", required=True)
    an_p.add_argument("--client", type=int, default=0, help="client of the local-overfit probe")
    an_p.add_argument("--steps", default="5",
                      help="local SGD steps of the probe: S, or a list like 1,2,5")
    an_p.add_argument("--no-figures", action="store_true")
    fig_p = sub.add_parser("figure", help="run the runs of a figure config and draw the figure")
    fig_p.add_argument("--config", required=True, help="experiments/configs/*.py with get_runs()")
    fig_p.add_argument("--workdir", required=True)
    fig_p.add_argument("--quiet", action="store_true")
    fig_p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="applied to every run (e.g. rounds=20)")
    res_p = sub.add_parser("results", help="regenerate every figure of docs/results.md, then the page")
    res_p.add_argument("--workdir", required=True, help="the figures and their shared runs")
    res_p.add_argument("--out", default="", help="the page (default: WORKDIR/results.md); its "
                       "images go to figures/ beside it")
    res_p.add_argument("--only", help="one section (figure) only, by name")
    res_p.add_argument("--page", choices=("main", "paper"), default="main",
                       help="main: docs/results.md (digits, mnist5k); paper: the paper's CIFAR-10 "
                       "configs beside the paper's numbers (meant for a GPU)")
    res_p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="applied to every run (e.g. rounds=2)")
    config_p = sub.add_parser("config", help="print the resolved config as JSON (nothing runs)",
                              **keys)
    config_p.add_argument("--config", help="Python file defining get_config()")
    config_p.add_argument("--plan", action="store_true",
                          help="print the memory plan instead: what the compiled round needs on "
                               "the device and what the device has (builds and compiles the "
                               "run, trains nothing, writes nothing)")
    config_p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    info_p = sub.add_parser("info", help="versions, backend, devices and the compilation cache "
                            "(warns when an accelerator plugin is installed but JAX runs on the CPU)")
    for p in (run_p, sweep_p, demo_p, an_p, fig_p, res_p, info_p):
        p.add_argument("--cache-dir", metavar="DIR",
                       help="persistent compilation cache (env FEDLN_JAX_CACHE_DIR; default "
                            "$XDG_CACHE_HOME/fedln_jax/jax or ~/.cache/fedln_jax/jax); 'off' "
                            "compiles every program afresh")
    return parser


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise FedlnError(f"--steps must be a positive integer or a list like 1,2,5, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise FedlnError(f"--steps must be positive, got {text!r}")
    if max(steps) > INT32_MAX:
        raise FedlnError(f"--steps {max(steps)} is too large: at most {INT32_MAX}")
    return steps


def main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):   # a workdir named in UTF-8 on an ASCII terminal
        if hasattr(stream, "reconfigure"):    # is printed escaped, never a crash after the run
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        status = _dispatch(args)
        sys.stdout.flush()   # here, not at exit: a reader that left (| head) is met below
        return status
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (StorageError, OutOfMemory) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `fedln-jax config | head`: the reader left; silent, as Unix tools
        # are; stdout to devnull, or Python reports the failed flush again at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:   # the file system failed somewhere unforeseen: still one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FedlnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # SIGTERM/SIGINT: a checkpoint was saved at a round boundary
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum


def check_options(args) -> None:
    """The CLI's own integer options, bounded before anything (JAX, data, workdir) is touched."""
    if args.command == "demo":
        if args.rounds < 1 or args.seeds < 1:
            raise FedlnError("--rounds and --seeds must be >= 1")
        if args.seeds > MAX_DEMO_SEEDS:
            raise FedlnError(f"--seeds {args.seeds} is too many for the demo: at most "
                             f"{MAX_DEMO_SEEDS} (three runs, none, ln and fn, per seed); use "
                             f"`fedln-jax sweep seed=...` for a longer study")
        if args.rounds > INT32_MAX:
            raise FedlnError(f"--rounds {args.rounds} is too large: at most {INT32_MAX}")
    if args.command == "analyze":
        if not 0 <= args.client <= INT32_MAX:
            raise FedlnError(f"client {args.client} is out of range: --client must be in "
                             f"0..{INT32_MAX} and below the run's num_clients")
        parse_steps(args.steps)
    if args.command == "sweep" and (args.max_runs_per_program or 0) > INT32_MAX:
        raise FedlnError(f"--max-runs-per-program={args.max_runs_per_program} is too large: "
                         f"at most {INT32_MAX}")


def _dispatch(args) -> int:
    """Check the options, prepare what the command needs, then run its handler (HANDLERS)."""
    check_options(args)
    prepare(args)
    return HANDLERS[args.command](args)


# Lazy imports below, for start-up time: the one exception to module-top imports
# (tests/test_architecture.py). Each handler imports only what its command needs.

# The commands that train (or time training): the CPU-fallback warning is for them.
TRAINING_COMMANDS = ("run", "sweep", "demo", "figure", "results", "bench", "info")


def prepare(args) -> None:
    """Before any command's own work: the environment JAX starts from checked, the workdir
    checked (before data or compilation are spent on it), the compilation cache, the
    processes joined, JAX's backends started."""
    from fedln_jax.runtime.startup import check_environment
    check_environment()   # before anything in this process lets JAX or XLA read it (and abort)
    if getattr(args, "workdir", None) is not None and args.command != "analyze":
        from fedln_jax.training.lock import check_path
        check_path(args.workdir)
    if args.command == "analyze" and not args.workdir.strip():
        raise FedlnError("--workdir is empty; name a run's workdir")
    args.cache_dir_in_use = None
    if hasattr(args, "cache_dir"):   # bench measures compilation: it never reads the cache
        from fedln_jax.runtime import compile_cache
        args.cache_dir_in_use = compile_cache.enable(args.cache_dir)
    if args.command in ("run", "sweep"):
        # First: JAX joins the processes only while no backend is up, and on a host with a
        # GPU/TPU plugin any backend query (the check below) starts one.
        from fedln_jax.runtime import distributed
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               auto=args.distributed)
    if args.command in TRAINING_COMMANDS:
        from fedln_jax.runtime.environment import warn_if_cpu_fallback
        warn_if_cpu_fallback()   # a plugin that gave no backend: one line, even if --quiet
        if args.command in ("run", "sweep"):   # ours or JAX_COMPILATION_CACHE_DIR's
            compile_cache.off_for_multi_process_cpu()   # a cached round hangs there (jax 0.12.1)
    elif args.command == "analyze" or getattr(args, "plan", False):
        from fedln_jax.runtime.environment import start_backends
        start_backends()   # JAX that cannot start: one error line (the warning is for training)


def _info(args) -> int:
    from fedln_jax.models import auto_conv_choice
    from fedln_jax.runtime.environment import describe
    conv, why = auto_conv_choice()   # models sit above runtime: the line is added here
    print("\n".join(describe(args.cache_dir_in_use) + [f"conv_impl auto    {conv} ({why})"]))
    return 0


def _sweep(args) -> int:
    from fedln_jax.studies.sweep import run_sweep
    rows = run_sweep(args.workdir, args.config, args.grid, quiet=args.quiet,
                     max_runs_per_program=args.max_runs_per_program, dry_run=args.dry_run)
    if rows:   # only process 0 of a multi-process sweep collects the results
        diverged = sum(row["status"] == "diverged" for row in rows)
        with open(os.path.join(args.workdir, "results.md")) as f:
            print(f.read().rstrip())
        print(f"{len(rows)} runs" + (f" ({diverged} diverged)" if diverged else "")
              + f"; wrote results.csv, results.md, sweep.png in {args.workdir}")
    return 0


def _config(args) -> int:
    from fedln_jax.config import build_config, dumps
    config = build_config(args.config, args.overrides)
    if not args.plan:
        print(dumps(config))
        return 0
    from fedln_jax.training.plan import check_plan, format_plan, memory_plan
    plan = memory_plan(config)
    print(format_plan(plan))
    check_plan(plan)
    return 0


def _run(args) -> int:
    from fedln_jax.config import build_config
    from fedln_jax.training.train import run
    summary = run(build_config(args.config, args.overrides), args.workdir, quiet=args.quiet)
    print(f"final_test_accuracy {summary['final_test_accuracy']:.4f} "
          f"after {summary['rounds_completed']} rounds; workdir {args.workdir}")
    return 0


def _demo(args) -> int:
    from fedln_jax.studies.demo import run_demo
    run_demo(args.workdir, seeds=tuple(range(args.seeds)), rounds=args.rounds, quiet=args.quiet)
    return 0


def _bench(args) -> int:
    import json
    from fedln_jax.bench.protocol import check_bench_flags, protocol_main
    from fedln_jax.bench.speed import run_bench
    check_bench_flags(args, vars(build_parser().parse_args(["bench"])))
    if args.protocol:
        return protocol_main(args)
    result = run_bench(model=args.model, clients=args.clients, local_steps=args.local_steps,
                       batch_size=args.batch_size, rounds=args.rounds, engine_name=args.engine,
                       chunk_size=args.chunk_size, norm=args.norm, dtype=_or(args.dtype, "float32"),
                       rounds_per_call=args.rounds_per_call, conv_impl=_or(args.conv_impl, "auto"),
                       chunk_policy=_or(args.chunk_policy, "auto"),
                       conv_features=args.conv_features, dense_features=args.dense_features)
    print(json.dumps(result))
    return 0


def _analyze(args) -> int:
    from fedln_jax.studies.analysis import analyze_run
    result = analyze_run(args.workdir, client=args.client, steps=parse_steps(args.steps),
                         figures=not args.no_figures)
    print(format_analysis(result))
    return 0


def _figure(args) -> int:
    from fedln_jax.studies.figures import run_figure
    run_figure(args.config, args.workdir, overrides=args.overrides, quiet=args.quiet)
    return 0


def _results(args) -> int:
    from fedln_jax.studies.regenerate import regenerate
    command = " ".join(["fedln-jax results --workdir", args.workdir]
                       + (["--out", args.out] if args.out else [])
                       + (["--only", args.only] if args.only is not None else [])
                       + (["--page", args.page] if args.page != "main" else []) + args.overrides)
    regenerate(args.workdir, args.out, page=args.page, only=args.only,
               overrides=args.overrides, command=command)
    return 0


# The subcommands of build_parser, each to its handler.
HANDLERS = {"run": _run, "sweep": _sweep, "demo": _demo, "bench": _bench, "analyze": _analyze,
            "figure": _figure, "results": _results, "config": _config, "info": _info}


def _or(value, default):
    """A bench flag's value, or its single-run default when it was not given ("" is kept)."""
    return default if value is None else value


def format_analysis(result: dict) -> str:
    fmt = lambda xs: " ".join("  - " if x is None else f"{x:5.2f}" for x in xs)
    lines = [f"{result['workdir']} ({result['norm_label']}, round {result['round']}): "
             f"global accuracy {result['global_acc']:.4f}",
             f"  per-class recall        {fmt(result['per_class_recall'])}",
             f"  feature norm per class  {fmt(result['feature_norm_per_class'])}",
             f"  head norm per class     {fmt(result['head_norm_per_class'])}",
             f"  singular values (top 8) {fmt(result['singular_values'][:8])}"]
    for p in result["local_overfit_by_steps"]:
        lines.append(f"  local overfit, client {p['client']} {p['client_classes']}, {p['steps']} "
                     f"step(s): global acc {p['global_acc_before']:.4f} -> {p['global_acc_after']:.4f}; "
                     f"recall after {fmt(p['per_class_recall_after'])}")
    lines.append(f"wrote {os.path.join(result['workdir'], 'analysis')}/analysis.json and figures")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
