"""The `dcr` command: one subcommand per stage (`refine`, `align`, `evaluate`, `pipeline`).

A stage registers itself in ``COMMANDS`` with a function that adds its arguments to a subparser and a
function that runs it from the parsed arguments; `main` only dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dcr import align_cli, evaluate_cli, pipeline_cli
from dcr.config import ConfigError, RefineConfig, add_arguments, build
from dcr.prompts import DataError


def _add_refine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of settings (the keys are the option "
        "names below with underscores); flags given here override it",
    )
    add_arguments(parser, RefineConfig)


def _run_refine(args: argparse.Namespace) -> int:
    from dcr.refine import refine

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "handler")}
    path = refine(build(RefineConfig, args.config, overrides))
    print(f"refined model saved to {path}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "refine": (
        "DCR stage: contrastive refinement of a causal LM at layer l, layers above l frozen. Settings come "
        "from the defaults, then --config, then flags.",
        _add_refine,
        _run_refine,
    ),
    "align": align_cli.COMMAND,
    "evaluate": evaluate_cli.COMMAND,
    "pipeline": pipeline_cli.COMMAND,
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="dcr", description="Discernment via contrastive refinement (DCR): reduce over-refusal of language models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (description, add, run) in COMMANDS.items():
        cmd = sub.add_parser(name, help=description, description=description)
        add(cmd)
        cmd.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dcr` console script; configuration and data errors exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, DataError, FileNotFoundError, ImportError) as err:
        print(f"dcr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
