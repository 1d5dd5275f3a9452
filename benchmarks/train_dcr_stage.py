"""Measure the DCR stage on the embedded SmolLM2-135M-Instruct (CPU by default).

  speed       time of the truncated forward (layers 1..l only) against a full forward with all hidden
              states, forward-only and forward+backward of the Circle loss, at the same batch
  memory      peak RSS of one contrastive step over a large batch with gradient caching against the same
              step without caching, each in a fresh subprocess (resource.getrusage ru_maxrss); both split
              the batch into the same length-sorted micro-batches, so padding is identical and only caching
              differs (uncached keeps every micro-batch's activations for one backward)
  separation  XSTest (safe vs unsafe) separation at layer l before and after a short refinement:
              1-NN label accuracy, cross-class cosine and a cross-validated linear probe's AUROC
  transfer    does the training contrast point the XSTest way? At every layer of the base model, a probe
              and the class-mean difference fitted on shipped training prompts score XSTest (AUROC)

Every subcommand prints one JSON object. Example: python benchmarks/train_dcr_stage.py speed --layer 15
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def _prompts(
    n: int, seed: int = 0, questions_only: bool = False, sources: list[str] | None = None
) -> tuple[list[str], torch.Tensor]:
    """``n`` shipped training prompts, half toxic and half seemingly toxic (of question form only, if asked)."""
    from dcr.prompts.sampler import BalancedBatchSampler
    from dcr.prompts.sets import load_labelled

    ds, _ = load_labelled(sources=sources)
    if questions_only:
        ds = ds.filter(lambda row: _is_question(row["text"]))
    rows = BalancedBatchSampler(ds["label"], n, seed=seed).batch(0)
    return [ds["text"][i] for i in rows], torch.tensor([ds["label"][i] for i in rows])


def _model_and_batch(n: int):
    from dcr.modeling.chat import collate, encode_prompts, pad_id
    from dcr.modeling.model import load_model

    model, tokenizer = load_model("default")
    texts, labels = _prompts(n)
    ids = encode_prompts(tokenizer, texts)
    return model, tokenizer, ids, labels, collate(ids, pad_id(tokenizer))


def speed(args: argparse.Namespace) -> dict:
    from dcr.modeling.layer_states import pool, represent
    from dcr.modeling.trainable import freeze_above
    from dcr.training.objective import make_loss

    model, _, _, labels, (input_ids, mask) = _model_and_batch(args.batch)
    freeze_above(model, args.layer)
    loss_fn = make_loss("circle")

    def truncated(grad: bool) -> None:
        with torch.set_grad_enabled(grad):
            rep = represent(model, input_ids, mask, args.layer)
            if grad:
                loss_fn(rep, labels).loss.backward()

    def full(grad: bool) -> None:
        with torch.set_grad_enabled(grad):
            states = model(input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            if grad:
                loss_fn(pool(states[args.layer], mask), labels).loss.backward()

    result = {
        "batch": args.batch,
        "tokens_per_prompt": float(mask.sum(1).float().mean()),
        "layer": args.layer,
        "depth": model.config.num_hidden_layers,
        "threads": torch.get_num_threads(),
    }
    for grad in (False, True):
        kind = "train_step" if grad else "forward"
        variants = (("truncated", truncated), ("full", full))
        times: dict[str, list[float]] = {name: [] for name, _ in variants}
        for rep in range(args.repeats + 1):  # round 0 warms up; variants alternate so load hits both alike
            for name, fn in variants:
                model.zero_grad(set_to_none=True)
                began = time.perf_counter()
                fn(grad)
                if rep:
                    times[name].append(time.perf_counter() - began)
        for name, _ in variants:
            result[f"{name}_{kind}_s"] = statistics.median(times[name])
    for kind in ("forward", "train_step"):
        result[f"{kind}_ratio_truncated_over_full"] = result[f"truncated_{kind}_s"] / result[f"full_{kind}_s"]
    return result


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_child(args: argparse.Namespace) -> dict:
    from dcr.modeling.prompt_embeddings import batch_embedder
    from dcr.modeling.trainable import freeze_above
    from dcr.training.gradcache import contrastive_backward
    from dcr.training.objective import make_loss

    model, tokenizer, ids, labels, _ = _model_and_batch(args.batch)
    freeze_above(model, args.layer)
    model.train()
    embed = batch_embedder(model, tokenizer, args.layer, precision="fp32")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    ids, labels = [ids[i] for i in order], labels[order]
    chunks = [ids[k : k + args.micro] for k in range(0, len(ids), args.micro)]
    before = _max_rss_mb()
    began = time.perf_counter()
    out, _ = contrastive_backward(embed, chunks, labels, make_loss("circle"), cache=args.cache)
    return {
        "cache": args.cache,
        "micro_batch": args.micro,
        "batch": args.batch,
        "layer": args.layer,
        "tokens": sum(len(c) * max(len(x) for x in c) for c in chunks),
        "loss": out.loss.item(),
        "peak_rss_before_step_mb": before,
        "peak_rss_mb": _max_rss_mb(),
        "step_s": time.perf_counter() - began,
    }


def memory(args: argparse.Namespace) -> dict:
    runs = {}
    for cache in ("--cache", "--no-cache"):
        cmd = [
            sys.executable,
            __file__,
            "memory-child",
            "--batch",
            str(args.batch),
            "--micro",
            str(args.micro),
            "--layer",
            str(args.layer),
            cache,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[cache[2:]] = json.loads(out.strip().splitlines()[-1])
    runs["cached"], runs["uncached"] = runs.pop("cache"), runs.pop("no-cache")
    runs["peak_ratio_cached_over_uncached"] = runs["cached"]["peak_rss_mb"] / runs["uncached"]["peak_rss_mb"]
    growth = [runs[k]["peak_rss_mb"] - runs[k]["peak_rss_before_step_mb"] for k in ("cached", "uncached")]
    runs["step_growth_ratio_cached_over_uncached"] = growth[0] / growth[1]
    return runs


def _xstest_family(kind: str) -> str:
    """XSTest's prompt type with its unsafe contrast merged in (homonyms + contrast_homonyms, ...)."""
    kind = kind.removeprefix("contrast_")
    return "discrimination" if "discr" in kind else "privacy" if kind.startswith("privacy") else kind


def separation(args: argparse.Namespace) -> dict:
    from dcr.evaluation.separation import nearest_neighbour_hits, separation_report
    from dcr.modeling.model import load_model
    from dcr.modeling.prompt_embeddings import embed_texts
    from dcr.prompts.sets import load_xstest
    from dcr.training.refine import refine
    from dcr.training.refine_config import RefineConfig

    xstest = load_xstest()
    labels = torch.tensor([int(label == "toxic") for label in xstest["label"]])

    def report(path: str) -> dict:
        model, tokenizer = load_model(path)
        reps = embed_texts(model, tokenizer, xstest["text"], args.layer, batch_size=32)
        hits = nearest_neighbour_hits(reps, labels)
        kinds = [_xstest_family(t) for t in xstest["type"]]
        by_kind = {
            k: round(hits[[i for i, t in enumerate(kinds) if t == k]].float().mean().item(), 3)
            for k in sorted(set(kinds))
        }
        return {**separation_report(reps, labels), "nn_accuracy_by_type": by_kind}

    before = report("default")
    with tempfile.TemporaryDirectory() as out:
        data = None
        if args.questions_only:
            data = _question_form_data(args.sources, f"{out}/questions.jsonl")
        elif args.twin_families:
            data = _twin_families_data(args.twin_families, f"{out}/twins.jsonl")
        config = RefineConfig(
            data=data,
            classes=["seemingly_toxic", "toxic"] if data else None,
            layer=args.layer,
            steps=args.steps,
            batch_size=args.batch,
            micro_batch_size=args.micro,
            lr=args.lr,
            warmup_steps=max(1, args.steps // 10),
            save_every=0,
            output_dir=out,
            eval_every=args.steps,
            progress=False,
            sources=None if data else args.sources,
            lora=args.lora,
            loss=args.loss,
            center=args.center,
            seed=args.seed,
        )
        began = time.perf_counter()
        refined = refine(config)
        seconds = time.perf_counter() - began
        after = report(str(refined))
        log = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    return {
        "settings": {
            k: getattr(config, k)
            for k in (
                "layer",
                "steps",
                "batch_size",
                "micro_batch_size",
                "lr",
                "loss",
                "margin",
                "gamma",
                "pooling",
                "sources",
                "lora",
                "center",
                "seed",
            )
        },
        "questions_only": args.questions_only,
        "twin_families": args.twin_families,
        "xstest_before": before,
        "xstest_after": after,
        "refine_seconds": seconds,
        "train_first_last": [log[0], [r for r in log if "split" not in r][-1]],
        "validation": [r for r in log if r.get("split") == "validation"],
    }


def _all_layers(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Last-prompt-token states of every layer, (depth + 1, N, D), from full forwards."""
    from dcr.modeling.chat import collate, encode_prompts, pad_id
    from dcr.modeling.layer_states import pool, position_ids

    ids = encode_prompts(tokenizer, texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = None
    with torch.no_grad():
        for k in range(0, len(order), 32):
            rows = order[k : k + 32]
            input_ids, mask = collate([ids[i] for i in rows], pad_id(tokenizer))
            states = model(
                input_ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
            ).hidden_states
            if out is None:
                out = torch.empty(len(states), len(ids), states[0].shape[-1])
            for layer, h in enumerate(states):
                out[layer, rows] = pool(h, mask)
    return out


_QUESTION_START = re.compile(r"^(how|what|why|where|when|who|which|can|could|is|are|do|does|should|would|will)\b", re.I)


def _is_question(text: str) -> bool:
    """Phrased as a question: a leading question word or a final question mark (XSTest's form)."""
    return bool(_QUESTION_START.match(text.strip())) or text.strip().endswith("?")


def _question_share(texts: list[str]) -> float:
    """Fraction of prompts phrased as questions."""
    return sum(map(_is_question, texts)) / len(texts)


def _question_form_data(sources: list[str] | None, path: str) -> str:
    """The shipped training prompts phrased as questions, as a JSONL file for `RefineConfig.data`: both
    classes then share XSTest's form, so the contrast cannot be learnt from form alone."""
    from dcr.prompts.sets import load_labelled

    ds, _ = load_labelled(sources=sources)
    with open(path, "w") as f:
        for text, label in zip(ds["text"], ds["label_name"], strict=True):
            if _is_question(text):
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def _twin_families_data(families: list[str], path: str) -> str:
    """The shipped twins of the named families only, as a JSONL file for `RefineConfig.data` (to see whether
    the refinement carries over to XSTest types that no training family covers)."""
    from dcr import DATA_DIR

    with open(DATA_DIR / "twins" / "prompts.jsonl") as src, open(path, "w") as f:
        f.writelines(line for line in src if json.loads(line)["family"] in families)
    return path


def transfer(args: argparse.Namespace) -> dict:
    from dcr.evaluation.separation import auroc, fit_logistic, nearest_neighbour_accuracy, probe_auroc
    from dcr.modeling.model import load_model
    from dcr.prompts.sets import load_xstest

    model, tokenizer = load_model("default")
    model.eval()
    texts, labels = _prompts(args.batch, questions_only=args.questions_only, sources=args.sources)
    xstest = load_xstest()
    xs_labels = torch.tensor([int(label == "toxic") for label in xstest["label"]])
    train, test = _all_layers(model, tokenizer, texts), _all_layers(model, tokenizer, list(xstest["text"]))
    rows = []
    for layer in range(1, train.shape[0]):
        x, y, xs = train[layer].double(), labels.double(), test[layer].double()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-8)
        w, _ = fit_logistic((x - mean) / std, y, 1e-2, 200)
        direction = x[y == 1].mean(0) - x[y == 0].mean(0)
        rows.append(
            {
                "layer": layer,
                "train_probe_on_xstest": auroc(((xs - mean) / std) @ w, xs_labels.bool()),
                "train_mean_difference_on_xstest": auroc(xs @ direction, xs_labels.bool()),
                "xstest_nn_accuracy": nearest_neighbour_accuracy(xs, xs_labels),
                "xstest_probe_auroc": probe_auroc(xs, xs_labels),
                "train_nn_accuracy": nearest_neighbour_accuracy(x, labels),
            }
        )
    from dcr.prompts.sets import load_labelled

    shipped, _ = load_labelled()
    share = {
        f"{name}_{label}": _question_share([t for t, y in zip(ds["text"], ds[key], strict=True) if y == label])
        for name, ds, key in (("train", shipped, "label_name"), ("xstest", xstest, "label"))
        for label in ("toxic", "seemingly_toxic")
    }
    return {
        "train_prompts": len(texts),
        "sources": args.sources,
        "questions_only": args.questions_only,
        "question_share": share,
        "layers": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, batch in (("speed", 16), ("memory", 512), ("memory-child", 512), ("separation", 32), ("transfer", 600)):
        p = sub.add_parser(name)
        p.add_argument("--batch", type=int, default=batch, help="prompts per contrastive batch")
        p.add_argument("--layer", type=int, default=15, help="layer l (SmolLM2 has 30)")
        p.add_argument("--micro", type=int, default=16, help="micro-batch size")
        p.add_argument(
            "--cache",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="gradient caching on or off (memory-child)",
        )
        p.add_argument("--repeats", type=int, default=3, help="timed repetitions (speed)")
        p.add_argument("--steps", type=int, default=30, help="refinement steps (separation)")
        p.add_argument("--lr", type=float, default=2e-5, help="learning rate (separation)")
        p.add_argument(
            "--sources", nargs="+", help="shipped training sources (separation, transfer; default: all but twins)"
        )
        p.add_argument("--lora", action="store_true", help="train LoRA adapters (separation)")
        p.add_argument("--twin-families", nargs="+", help="train on these twin families only (separation)")
        p.add_argument("--seed", type=int, default=0, help="refinement seed (separation)")
        p.add_argument("--center", action="store_true", help="centre the batch before the loss (separation)")
        p.add_argument("--loss", default="circle", choices=("circle", "supcon", "infonce"), help="(separation)")
        p.add_argument(
            "--questions-only",
            action="store_true",
            help="only the question-form training prompts (separation, transfer)",
        )
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    commands = {
        "speed": speed,
        "memory": memory,
        "memory-child": memory_child,
        "separation": separation,
        "transfer": transfer,
    }
    run = commands[args.command]
    print(json.dumps(run(args), indent=None if args.command == "memory-child" else 2))


if __name__ == "__main__":
    main()
