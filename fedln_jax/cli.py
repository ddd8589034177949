"""Console script `fedln-jax`: run | demo. Bad input: one `error:` line on stderr, exit 2."""
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
    raise FedlnError(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
