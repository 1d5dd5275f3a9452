"""`dcr evaluate`: load a local model (or the embedded default) and run `dcr.evaluate.evaluate` on it.

`COMMAND` has the shape of an entry of `dcr.cli.COMMANDS`: (description, add arguments, run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dcr.eval_sets import DEFAULT_SETS, SETS

DESCRIPTION = (
    "Evaluate refusal behaviour (greedy generation on held-out sets, judged by a refusal detector), layer-l "
    "representation separation of XSTest unsafe vs safe prompts (with a PCA plot), and answer perplexity; "
    "writes results.json, completions.jsonl, report.md and projection.png."
)


def _sets(value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown or empty set list {value!r}; choose from {','.join(SETS)}")
    return names


def _layer(value: str) -> int | float:
    try:
        return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer must be an index (15) or a fraction (0.5), got {value!r}") from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dcr evaluate`."""
    parser.add_argument("--model", default="default", help="local Hugging Face model folder, or 'default' for the "
                        "embedded SmolLM2-135M-Instruct (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the results and report")
    parser.add_argument("--name", help="label of the model in the report (default: the model folder's name)")
    parser.add_argument("--sets", type=_sets, default=list(DEFAULT_SETS),
                        help=f"comma-separated generation sets (default: {','.join(DEFAULT_SETS)})")
    parser.add_argument("--limit", type=_positive, help="at most this many prompts per set, evenly spread (quick runs)")
    parser.add_argument("--max-new-tokens", type=_positive, default=48,
                        help="response length; a refusal shows in the first sentence (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive, default=16, help="prompts per batch (default: %(default)s)")
    parser.add_argument("--layer", type=_layer, default=0.5, help="layer l for the representation metrics: an index "
                        "1..depth or a fraction of the depth (default: %(default)s)")
    parser.add_argument("--pooling", choices=("last", "mean"), default="last",
                        help="token states to one vector (default: %(default)s)")
    parser.add_argument("--no-representation", action="store_true", help="skip the representation metrics and plot")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the answer-perplexity proxy")
    parser.add_argument("--perplexity-limit", type=_positive,
                        help="at most this many answers for the perplexity proxy (default: --limit)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ... "
                        "(default: %(default)s)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="weights dtype; auto: bfloat16 on CUDA, float32 on CPU (default: %(default)s)")
    parser.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice); on a "
                        "CPU shared with other jobs, 1 avoids thread oversubscription, which slows decoding many-fold")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Load the model, evaluate it, and print where the report went."""
    import torch

    from dcr.evaluate import evaluate
    from dcr.model import load_model
    from dcr.runtime import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, tokenizer = load_model(args.model, device=device, dtype=dtype)
    name = args.name or ("SmolLM2-135M-Instruct" if args.model == "default" else Path(args.model).name)
    results = evaluate(model, tokenizer, sets=args.sets, layer=None if args.no_representation else args.layer,
                       pooling=args.pooling, perplexity=not args.no_perplexity, out_dir=args.out,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                       perplexity_limit=args.perplexity_limit, name=name,
                       progress=not args.quiet)
    for key, value in results["summary"].items():
        print(f"{key}: {value:.4f}")
    print(f"report written to {args.out / 'report.md'}")
    return 0


COMMAND = (DESCRIPTION, add_arguments, run)
