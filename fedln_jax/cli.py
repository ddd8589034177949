"""Console script `fedln-jax`: run | demo | bench. Bad input: one `error:` line on stderr, exit 2."""
from __future__ import annotations

import argparse
import sys

from fedln_jax.errors import DivergedError, FedlnError, Interrupted


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage over several lines
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedln-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_p = sub.add_parser("run", help="run one experiment")
    run_p.add_argument("--workdir", required=True)
    run_p.add_argument("--config", help="Python file defining get_config()")
    run_p.add_argument("--quiet", action="store_true", help="no progress bar or logs")
    run_p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    demo_p = sub.add_parser("demo", help="the headline comparison on the embedded digits")
    demo_p.add_argument("--workdir", default="fedln_demo")
    demo_p.add_argument("--rounds", type=int, default=60)
    demo_p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    demo_p.add_argument("--quiet", action="store_true")
    bench_p = sub.add_parser("bench", help="time rounds on synthetic data; prints one JSON object")
    bench_p.add_argument("--model", default="cnn", choices=("cnn", "small_cnn", "mlp"),
                         help="cnn = paper CNN on 32x32x3, small_cnn = digits CNN on 8x8x1")
    bench_p.add_argument("--clients", type=int, default=10)
    bench_p.add_argument("--local-steps", type=int, default=5)
    bench_p.add_argument("--batch-size", type=int, default=32)
    bench_p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    bench_p.add_argument("--engine", default="vectorized", choices=("vectorized", "loop"))
    bench_p.add_argument("--chunk-size", type=int, default=0,
                         help="clients vmapped together per device; 0 = backend default")
    bench_p.add_argument("--norm", default="none", choices=("none", "bn", "gn", "ln", "fn"))
    bench_p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    bench_p.add_argument("--rounds-per-call", type=int, default=1,
                         help="rounds fused into one jitted call (vectorized engine)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except FedlnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # SIGTERM/SIGINT: a checkpoint was saved at a round boundary
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum


def _dispatch(args) -> int:
    if args.command == "run":
        from fedln_jax.config import build_config
        from fedln_jax.train import run
        config = build_config(args.config, args.overrides)
        summary = run(config, args.workdir, quiet=args.quiet)
        print(f"final_test_accuracy {summary['final_test_accuracy']:.4f} "
              f"after {summary['rounds_completed']} rounds; workdir {args.workdir}")
        return 0
    if args.command == "demo":
        from fedln_jax.demo import run_demo
        if args.rounds < 1 or args.seeds < 1:
            raise FedlnError("--rounds and --seeds must be >= 1")
        run_demo(args.workdir, seeds=tuple(range(args.seeds)), rounds=args.rounds, quiet=args.quiet)
        return 0
    if args.command == "bench":
        import json
        from fedln_jax.bench import run_bench
        result = run_bench(model=args.model, clients=args.clients, local_steps=args.local_steps,
                           batch_size=args.batch_size, rounds=args.rounds, engine_name=args.engine,
                           chunk_size=args.chunk_size, norm=args.norm, dtype=args.dtype,
                           rounds_per_call=args.rounds_per_call)
        print(json.dumps(result))
        return 0
    raise FedlnError(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
