"""`dcr pipeline`: base model -> (a) alignment only and (b) DCR + alignment -> evaluation and comparison.

`COMMAND` has the shape of an entry of `dcr.cli.COMMANDS`; ``python -m dcr.pipeline_cli`` runs it directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dcr.config import ConfigError, read_file
from dcr.profiles import PROFILES

DESCRIPTION = (
    "From one base model, run (a) alignment only and (b) the DCR stage then alignment with the same data, seeds "
    "and budget; evaluate the base, (a) and (b); write report.md, comparison.json and comparison.png. A rerun "
    "skips finished steps."
)


def add(parser: argparse.ArgumentParser) -> None:
    """The options of `dcr pipeline`."""
    parser.add_argument("--profile", choices=list(PROFILES), default="quick",
                        help="quick: 2-core CPU, about 15 min with the default model; full: a GPU and a bigger "
                        "model (default: %(default)s)")
    parser.add_argument("--model", default="default", help="local Hugging Face model folder, or 'default' for the "
                        "embedded SmolLM2-135M-Instruct (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="run folder (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the DCR and alignment stages (default: the "
                        "profile's)")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file with sections refine, align and "
                        "evaluate whose keys override the profile's settings of that stage")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ... "
                        "(default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print the comparison."""
    from dcr.pipeline import run_pipeline

    overrides = read_file(args.config) if args.config else {}
    if not all(isinstance(v, dict) for v in overrides.values()):
        raise ConfigError(f"{args.config}: every top-level key must be a section (refine, align, evaluate)")
    result = run_pipeline(args.model, args.out, args.profile, seeds=args.seeds, overrides=overrides,
                          device=args.device, progress=not args.quiet)
    print(result["paths"]["report"].read_text())
    print(f"report written to {result['paths']['report']}")
    return 0


COMMAND = (DESCRIPTION, add, run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dcr pipeline` without the `dcr` entry point; configuration errors exit with status 2."""
    from dcr.prompts import DataError

    parser = argparse.ArgumentParser(prog="dcr pipeline", description=DESCRIPTION)
    add(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, DataError, FileNotFoundError, ImportError) as err:
        print(f"dcr pipeline: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
