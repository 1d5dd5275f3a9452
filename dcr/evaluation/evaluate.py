"""Evaluate a model's refusal behaviour, its layer-l representations and a general-ability proxy.

- Behaviour: greedy responses to each held-out set (`dcr.prompts.eval_sets`), judged by the refusal detector
  (`dcr.evaluation.refusal`, with XSTest's prefix match alongside); each set reports the rate of its expected behaviour
  (compliance on safe and benign prompts, refusal on unsafe ones).
- Representation: XSTest's unsafe vs safe prompts at layer l (cross-class cosine, 1-NN label accuracy, linear
  probe AUROC) and a PCA plot of the two classes.
- Ability: perplexity of the Self-Instruct user-oriented reference answers (evaluation-only data).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dcr.evaluation.config import EvaluateConfig
from dcr.evaluation.generate import generate
from dcr.evaluation.journal import GenerationJournal, folder_fingerprint
from dcr.evaluation.judge import CUES, Judge, cue_judge, load_judge
from dcr.evaluation.perplexity import perplexity as answer_perplexity
from dcr.evaluation.plots import projection_plot
from dcr.evaluation.refusal import analyse, is_refusal_prefix
from dcr.evaluation.report import write_results
from dcr.evaluation.separation import separation_report
from dcr.modeling.layer_states import Pooling, num_layers, resolve_layer
from dcr.modeling.model import DTYPES, layer_before_load, load_model, resolve_model_path
from dcr.modeling.prompt_embeddings import embed_texts
from dcr.modeling.ranks import Ranks, start
from dcr.prompts.eval_sets import DEFAULT_SETS, load_set, resolve_sets
from dcr.run_lock import claim

REPRESENTATION_CLASSES = ("seemingly_toxic", "toxic")


def summary_key(name: str, expected: str) -> str:
    """The headline metric of a set: ``<set>_compliance`` or ``<set>_refusal``, whichever it expects."""
    return f"{name}_{'compliance' if expected == 'comply' else 'refusal'}"


def behaviour(rows: Sequence[dict], expected: str) -> dict:
    """Refusal rates (detector and XSTest prefix) over judged completions, overall and per prompt type."""
    n = len(rows)
    refusal = sum(r["refusal"] for r in rows) / n
    out = {
        "n": n,
        "expected": expected,
        "refusal_rate": refusal,
        "compliance_rate": 1.0 - refusal,
        "refusal_rate_prefix": sum(r["refusal_prefix"] for r in rows) / n,
        "score": refusal if expected == "refuse" else 1.0 - refusal,
    }
    types = sorted({r["type"] for r in rows if r.get("type")})
    if len(types) > 1:
        out["by_type"] = {
            t: {"n": len(sel), "refusal_rate": sum(r["refusal"] for r in sel) / len(sel)}
            for t in types
            for sel in [[r for r in rows if r.get("type") == t]]
        }
    return out


def judged_rows(
    set_name: str, prompts: Sequence[dict], responses: Sequence[str], judge: Judge = cue_judge
) -> list[dict]:
    """The completion rows of a set: each response with the judge's verdict, the cue detector's and the prefix
    match's (``prompts``: rows with id, text and optionally type or subcategory)."""
    cues = [analyse(r) for r in responses]
    verdicts = [v.refusal for v in cues] if judge is cue_judge else judge([p["text"] for p in prompts], responses)
    rows = []
    for p, response, refusal, verdict in zip(prompts, responses, verdicts, cues, strict=True):
        rows.append(
            {
                "set": set_name,
                "id": p["id"],
                "type": p.get("type") or p.get("subcategory"),
                "prompt": p["text"],
                "response": response,
                "refusal": refusal,
                "refusal_cues": verdict.refusal,
                "refusal_prefix": is_refusal_prefix(response),
                "refusal_score": verdict.score,
                "cues": list(verdict.cues),
            }
        )
    return rows


def representation(
    model: nn.Module,
    tokenizer,
    layer: int,
    *,
    pooling: Pooling,
    limit: int | None,
    batch_size: int,
    plot_path: Path | None,
    title: str,
) -> dict:
    """Separation of XSTest unsafe vs safe prompts at ``layer``; writes the PCA plot when ``plot_path`` is set."""
    rows = load_set("xstest_safe", limit) + load_set("xstest_unsafe", limit)
    names = [r["label"] for r in rows]
    device = next(model.parameters()).device
    emb = embed_texts(
        model, tokenizer, [r["text"] for r in rows], layer, pooling=pooling, batch_size=batch_size, device=device
    )
    labels = torch.tensor([REPRESENTATION_CLASSES.index(n) for n in names])
    out = {"layer": layer, "pooling": pooling, "n": len(rows), **separation_report(emb, labels)}
    if plot_path is not None and projection_plot(emb, names, plot_path, title=title) is not None:
        out["plot"] = plot_path.name
    return out


def _sharded_generate(
    model: nn.Module, tokenizer, texts: list[str], on_batch: Callable[[list[int], list[str]], None], **kw
) -> list[str]:
    """Greedy responses; under torchrun each rank generates its share and every rank gets all, in order.
    ``on_batch`` receives this rank's batches (positions in ``texts``) as they are generated."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return generate(model, tokenizer, texts, on_batch=on_batch, **kw) if texts else []
    ranks = Ranks(dist.get_rank(), dist.get_world_size())
    share = ranks.share(len(texts))
    local = texts[share]
    shifted = lambda rows, outs: on_batch([share.start + i for i in rows], outs)  # noqa: E731
    local = generate(model, tokenizer, local, on_batch=shifted, **kw) if local else []
    parts: list[list[str] | None] = [None] * ranks.world
    dist.all_gather_object(parts, local)
    return [response for part in parts for response in part]


def evaluate(
    model: nn.Module,
    tokenizer,
    *,
    sets: Sequence[str] = DEFAULT_SETS,
    layer: int | float | None = 0.5,
    pooling: Pooling = "last",
    perplexity: bool = True,
    out_dir: str | Path | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    limit: int | None = None,
    perplexity_limit: int | None = None,
    name: str = "model",
    progress: bool = True,
    judge: str = CUES,
    journal: GenerationJournal | None = None,
) -> dict:
    """Run the evaluation and return its results; with ``out_dir``, also write them there.

    ``sets`` names the generation sets (see `dcr.prompts.eval_sets.SETS`); ``layer`` (an index 1..depth or a fraction
    of the depth; None skips) is where representations are compared; ``perplexity`` toggles the ability proxy;
    ``limit`` caps the prompts of every set (evenly spread through it) for quick runs, and
    ``perplexity_limit`` the perplexity answers (default: ``limit``); ``judge`` is ``cues`` (the weighted-cue
    detector) or a chat-model folder judging with XSTest's rubric (`dcr.evaluation.judge`). Files written: see
    `dcr.evaluation.report.write_results`. With a ``journal`` (`dcr.evaluation.journal`) responses are
    recorded as they are generated and the ones it already holds are not generated again.
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    start = time.perf_counter()
    perplexity_limit = limit if perplexity_limit is None else perplexity_limit
    results: dict = {
        "model": name,
        "settings": {
            "sets": list(sets),
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "limit": limit,
            "pooling": pooling,
            "perplexity_limit": perplexity_limit,
            "judge": judge,
        },
        "sets": {},
        "summary": {},
        "timing_s": {},
    }
    completions: list[dict] = []
    judged_by = load_judge(judge, device=next(model.parameters()).device)
    for set_name, expected, prompts in resolve_sets(list(sets), limit):
        tic = time.perf_counter()
        known = journal.known(set_name, prompts) if journal is not None else {}
        todo = [i for i in range(len(prompts)) if i not in known]
        if known and progress:
            print(f"{set_name}: {len(known)} responses kept from an unfinished run, {len(todo)} to generate")

        def keep(rows: list[int], outs: list[str], todo=todo, set_name=set_name, prompts=prompts) -> None:
            if journal is not None:
                journal.record(set_name, [prompts[todo[i]] for i in rows], outs)

        fresh = _sharded_generate(
            model,
            tokenizer,
            [prompts[i]["text"] for i in todo],
            keep,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            desc=set_name,
        )
        responses = [known.get(i, "") for i in range(len(prompts))]
        for i, response in zip(todo, fresh, strict=True):
            responses[i] = response
        rows = judged_rows(set_name, prompts, responses, judged_by)
        completions += rows
        results["sets"][set_name] = behaviour(rows, expected)
        results["summary"][summary_key(set_name, expected)] = results["sets"][set_name]["score"]
        results["timing_s"][set_name] = time.perf_counter() - tic
    if layer is not None:
        tic = time.perf_counter()
        index = resolve_layer(layer, num_layers(model))
        plot = out_dir / "projection.png" if out_dir is not None else None
        rep = representation(
            model,
            tokenizer,
            index,
            pooling=pooling,
            limit=limit,
            batch_size=batch_size,
            plot_path=plot,
            title=f"{name}\nXSTest prompts, layer {index}, {pooling} token",
        )
        results["representation"] = rep
        results["summary"].update({k: rep[k] for k in ("probe_auroc", "nn_accuracy", "cross_class_cosine") if k in rep})
        results["timing_s"]["representation"] = time.perf_counter() - tic
    if perplexity:
        tic = time.perf_counter()
        pairs = [(r["text"], r["answer"]) for r in load_set("self_instruct_user", perplexity_limit)]
        results["perplexity"] = answer_perplexity(
            model, tokenizer, pairs, batch_size=max(1, batch_size // 2), progress=progress
        )
        results["summary"]["perplexity"] = results["perplexity"]["perplexity"]
        results["timing_s"]["perplexity"] = time.perf_counter() - tic
    results["timing_s"]["total"] = time.perf_counter() - start
    if out_dir is not None:
        write_results(results, completions, out_dir)
        if journal is not None:
            journal.remove_all()
    elif journal is not None:
        journal.close()
    return results


def evaluate_model(config: EvaluateConfig) -> dict:
    """Load the model `config` names and evaluate it as configured (what `dcr evaluate` runs)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    ranks, device = start(config.device)
    with claim(config.output_dir, ranks):  # the output folder is this run's until it ends (dcr.run_lock)
        auto = torch.bfloat16 if device.type == "cuda" else torch.float32
        dtype = auto if config.dtype == "auto" else DTYPES[config.dtype]
        layer = layer_before_load(config.layer, config.model) if config.representation else None
        model, tokenizer = load_model(config.model, device=device, dtype=dtype)
        name = config.name or ("SmolLM2-135M-Instruct" if config.model == "default" else Path(config.model).name)
        key = {
            "model": folder_fingerprint(resolve_model_path(config.model)),
            "dtype": str(dtype),
            "device": device.type,
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
        }
        journal = GenerationJournal(config.output_dir, key, ranks.rank)
        ranks.barrier()  # every rank has read the journals before any rank appends to its own
        try:
            return evaluate(
                model,
                tokenizer,
                sets=config.sets,
                layer=layer,
                pooling=config.pooling,
                perplexity=config.perplexity,
                out_dir=config.output_dir if ranks.main else None,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size,
                limit=config.limit,
                perplexity_limit=config.perplexity_limit,
                name=name,
                progress=config.progress,
                judge=config.judge,
                journal=journal,
            )
        finally:
            journal.close()
