"""The `dcr` command. Every subcommand reads its settings the same way: defaults, then `--config FILE`
(YAML or JSON, keys as the flags with underscores), then flags; `--print-config` prints the resolved
settings instead of running. `dcr` alone prints this help; `dcr --version` the version."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import dcr
from dcr.cli.commands import COMMANDS
from dcr.config import ConfigError, add_arguments, build, to_yaml
from dcr.prompts.tables import DataError

_SPECIAL = ("command", "config", "print_config", "handler")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="dcr", description="Discernment via contrastive refinement (DCR): reduce over-refusal of language models."
    )
    parser.add_argument("--version", action="version", version=f"dcr {dcr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(
            name,
            help=command.summary,
            description=command.description,
            epilog=f"example: {command.example}",
        )
        files = cmd.add_argument_group("settings file")
        files.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings; flags override it")
        files.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
        add_arguments(cmd, command.settings)
        for old, new in command.renamed:
            cmd.add_argument(
                old, nargs="?", action=_Renamed, default=argparse.SUPPRESS, help=argparse.SUPPRESS, instead=new
            )
    return parser


class _Renamed(argparse.Action):
    """A flag this command no longer takes: refused with what to use instead."""

    def __init__(self, *args, instead: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instead = instead

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is not an option of this command; use {self.instead}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dcr` console script; configuration and data errors exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = COMMANDS[args.command]
    try:
        overrides = {k: v for k, v in vars(args).items() if k not in _SPECIAL}
        config = build(command.settings, args.config, overrides)
        if args.print_config:
            print(to_yaml(config), end="")
            return 0
        result = command.run(config)
        if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate, rank 0 speaks for the run
            print(result)
        return 0
    except (ConfigError, DataError, FileNotFoundError, ImportError) as err:
        print(f"dcr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
