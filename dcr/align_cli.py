"""`dcr align`: the alignment stage from the command line (defaults, then --config, then flags).

`COMMAND` has the shape of an entry of `dcr.cli.COMMANDS`: (description, add arguments, run).
"""

from __future__ import annotations

import argparse

from dcr.align_config import AlignConfig
from dcr.config import add_arguments, build

DESCRIPTION = (
    "Alignment stage: supervised fine-tuning on benign (prompt, answer) pairs plus (harmful prompt, refusal) "
    "pairs, loss on response tokens only, with an optional contrastive retention term at layer l. Settings come "
    "from the defaults, then --config, then flags."
)


def add(parser: argparse.ArgumentParser) -> None:
    """The options of `dcr align`: --config plus one flag per `AlignConfig` field."""
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (the keys are the option "
                        "names below with underscores); flags given here override it")
    add_arguments(parser, AlignConfig)


def run(args: argparse.Namespace) -> int:
    """Build the config and run the stage."""
    from dcr.align import align

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "handler")}
    path = align(build(AlignConfig, args.config, overrides))
    print(f"aligned model saved to {path}")
    return 0


COMMAND = (DESCRIPTION, add, run)
