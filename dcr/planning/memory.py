"""Per-GPU memory of a training stage, from the model's configuration alone (no weights loaded).

The plan counts what the stages hold, as `dcr.training` runs them:
- weights: every parameter in the weights' dtype; under FSDP (`dcr.modeling.sharding`) the decoder
  layers are 1/N shards, trained layers as fp32 master weights, and the embeddings, final norm and LM head
  stay replicated; LoRA adapters are fp32 (peft's default);
- gradients and AdamW's two moments of the trained parameters, in their dtype (1/N under FSDP), plus the
  optimizer step's temporaries (one more copy: the foreach update's denominators);
- FSDP's working set: two decoder layers gathered in the compute dtype (the one running and the one
  next), one layer's unsharded fp32 gradient (its adapters' with LoRA) before it is reduce-scattered, and
  when the replicated embeddings and head train, the flat buffer their gradients are all-reduced in;
- activations of one micro-batch (gradient caching bounds them by the micro-batch): per token and computed
  layer the tensors a SwiGLU decoder layer keeps for its backward (6 H + 2 kv + 4 I values: both norms'
  inputs and outputs, q, k, v, the attention output, gate, its activation, up and their product), plus
  one layer's gradients in flight; with
  gradient checkpointing only each layer's input and one layer; materialised attention adds heads x seq
  scores per token; the alignment stage adds the logits of the scored tokens (at most every token);
- the contrastive loss's O(B D): this rank's rows' cached embeddings and their gradient, and with several
  ranks the ring's key blocks and their gradient accumulators (6 B/N D fp32 values).
The peak is the larger of the forward/backward phase and the optimizer step. What the CUDA context and
the allocator's cache add comes on top (`reserve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

Stage = Literal["refine", "align"]
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, head_dim=128,
                         vocab=151936, tied=True, qkv_bias=True),
    "llama-3-8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128,
                       vocab=128256, tied=False),
    "llama-3-70b": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, head_dim=128,
                        vocab=128256, tied=False),
}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """The sizes of a decoder-only transformer with grouped-query attention and a SwiGLU MLP."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Architecture:
        """From a `transformers` configuration (LLaMA, Qwen2, Mistral and their relatives)."""
        text = config.get_text_config()
        heads = text.num_attention_heads
        return cls(
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=bool(getattr(text, "attention_bias", False)) or text.model_type == "qwen2",
        )

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def layer_params(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linears()) + bias + 2 * self.hidden

    @property
    def outer_params(self) -> int:
        """Token embeddings, final norm and (unless tied) the LM head: the replicated part."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.outer_params

    def lora_params(self, r: int) -> int:
        """Adapter parameters of rank r on every linear layer of one decoder layer."""
        return r * sum(a + b for a, b in self.linears())

    def activation_values(self) -> int:
        """Values one token keeps per decoder layer for the backward (see the module docstring)."""
        return 6 * self.hidden + 2 * self.kv_heads * self.head_dim + 4 * self.intermediate


@dataclass(frozen=True)
class Setting:
    """How a stage is run: which layers train, on how many GPUs, with what batch."""

    stage: Stage = "refine"
    layer: int = 1  # refine: layers 1..layer train (the rest are frozen and not computed); align: all
    gpus: int = 1
    fsdp: bool = False
    lora_r: int | None = None
    weights: str = "bf16"  # the weights' dtype
    compute: str = "bf16"  # autocast / FSDP compute dtype
    micro_batch: int = 32
    seq_len: int = 256
    batch: int = 1024  # the global contrastive batch (refine)
    embedding_dim: int | None = None  # D of the loss; default the hidden size
    gradient_checkpointing: bool = False
    materialised_attention: bool = False  # eager / math attention keeps heads x seq scores per token


def plan(arch: Architecture, s: Setting) -> dict[str, int]:
    """Bytes per GPU of each part and of the peak (see the module docstring)."""
    n = s.gpus if s.fsdp else 1  # the sharding factor
    w, c = DTYPE_BYTES[s.weights], DTYPE_BYTES[s.compute]
    trained_layers = s.layer if s.stage == "refine" else arch.layers
    outer_trained = s.stage == "align" and s.lora_r is None
    if s.lora_r is not None:
        adapters = trained_layers * arch.lora_params(s.lora_r)
        weights = (arch.layers * arch.layer_params * w) / n + arch.outer_params * w + adapters * 4 / n
        trained = adapters * 4 / n
    elif s.fsdp:
        frozen_layers = arch.layers - trained_layers
        weights = (trained_layers * arch.layer_params * 4 + frozen_layers * arch.layer_params * w) / n
        weights += arch.outer_params * w
        trained = trained_layers * arch.layer_params * 4 / n + (arch.outer_params * w if outer_trained else 0)
    else:
        weights = arch.params * w
        trained = (trained_layers * arch.layer_params + (arch.outer_params if outer_trained else 0)) * w
    gradients, optimizer, step_temporaries = trained, 2 * trained, trained
    working = 0
    if s.fsdp:  # two layers gathered, one layer's unsharded fp32 gradient, the replicated part's flat buffer
        unsharded_grad = arch.lora_params(s.lora_r) if s.lora_r is not None else arch.layer_params
        working = 2 * arch.layer_params * c + unsharded_grad * 4 + (arch.outer_params * w if outer_trained else 0)
    tokens = s.micro_batch * s.seq_len
    per_layer = arch.activation_values() + (arch.heads * s.seq_len if s.materialised_attention else 0)
    computed = trained_layers if s.stage == "refine" else arch.layers
    if s.gradient_checkpointing:
        activations = tokens * (computed * arch.hidden + 2 * per_layer) * c
    else:
        activations = tokens * (computed + 1) * per_layer * c
    if s.stage == "align":
        activations += tokens * arch.vocab * (c + 8)  # scored tokens' logits, their fp32 copy and gradient
    rows = math.ceil(s.batch / s.gpus) if s.stage == "refine" else 0
    loss = rows * loss_bytes_per_row(arch, s)
    held = weights + gradients + optimizer
    peak = max(held + working + activations + loss, held + step_temporaries)
    parts = dict(weights=weights, gradients=gradients, optimizer=optimizer, fsdp_working=working,
                 activations=activations, loss=loss, peak=peak)  # fmt: skip
    return {k: int(v) for k, v in parts.items()}


def loss_bytes_per_row(arch: Architecture, s: Setting) -> int:
    """The contrastive loss's bytes per row a rank holds: the cached embedding and its gradient (and a
    normalised copy); with several ranks the ring's key blocks and their gradient accumulators too."""
    return (s.embedding_dim or arch.hidden) * 4 * (6 if s.gpus > 1 else 3)


def largest_batch(arch: Architecture, s: Setting, budget: int) -> int | None:
    """The largest global contrastive batch whose plan fits ``budget`` bytes per GPU (refine only; None when
    even an empty batch does not fit or the stage has no contrastive batch)."""
    parts = plan(arch, replace(s, batch=0))
    if s.stage != "refine" or parts["peak"] > budget:
        return None
    fixed = sum(parts[k] for k in ("weights", "gradients", "optimizer", "fsdp_working", "activations"))
    return (budget - fixed) // loss_bytes_per_row(arch, s) * s.gpus
