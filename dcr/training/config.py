"""Settings every training stage shares: the model and where it runs, LoRA, the optimizer and schedule,
the contrastive loss (the DCR stage's objective, the alignment stage's retention term) and the run folder.

`RefineConfig` and `AlignConfig` extend `TrainingConfig` with their own data and batch settings; the
training loop (`dcr.training.loop`) reads only the fields defined here.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcr.config import Settings, option
from dcr.training.tracking import REPORT_TO

# Settings that do not change a run's trajectory, so a resumed run (or a finished pipeline step) may differ in them.
RUN_ONLY = frozenset(
    {"output_dir", "resume", "save_every", "keep_checkpoints", "eval_every", "progress", "strategy", "fsdp"}
)


@dataclass
class TrainingConfig(Settings):
    """The settings of the training loop and of the model it trains."""

    model: str = option(
        "default",
        "Model to train: a local Hugging Face causal-LM folder (e.g. the output of an earlier stage), or "
        "'default' for the embedded SmolLM2-135M-Instruct (converted once into the user cache).",
        topic="model",
    )
    revision: str | None = option(
        None, "Revision (branch, tag or commit) of a Hub-id model in the local cache. Unset: main.", topic="model"
    )
    dtype: str = option(
        "auto",
        "Weights dtype: auto (the checkpoint's own), fp32, bf16 or fp16; the model is saved in it. Full "
        "fine-tuning wants fp32 weights; bf16 suits LoRA on memory-limited GPUs.",
        ("auto", "fp32", "bf16", "fp16"),
        "model",
    )
    device: str = option("auto", "Device: auto (CUDA if available), cpu, cuda, cuda:1, ...", topic="model")
    gradient_checkpointing: bool = option(
        False, "Recompute the trained layers' activations in the backward instead of keeping them.", topic="model"
    )
    precision: str = option(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU; or force bf16 / fp32.", ("auto", "bf16", "fp32"), "model"
    )
    attention: str = option(
        "auto",
        "Attention implementation: auto (flash_attention_2 on CUDA when flash-attn is installed, else sdpa), "
        "sdpa, eager, flash_attention_2.",
        topic="model",
    )
    fsdp: bool = option(
        False,
        "Under torchrun / accelerate launch: shard the decoder layers over the ranks with FSDP2 (each rank holds "
        "1/world of the trained layers' weights, gradients and optimizer state; bf16 compute on GPUs with fp32 "
        "master weights). Same weights as without; see `dcr plan` for the memory.",
        topic="model",
    )
    lora: bool = option(False, "Train LoRA adapters (needs peft), merged into the saved model.", topic="LoRA")
    lora_merge: bool = option(
        True, "Save the model with the adapters merged in; --no-lora-merge saves a peft adapter folder.", topic="LoRA"
    )
    lora_r: int = option(16, "LoRA rank.", topic="LoRA")
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha / r).", topic="LoRA")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.", topic="LoRA")
    pooling: str = option(
        "last",
        "Token states to one vector: 'last' (the last prompt token, which predicts the first response token) "
        "or 'mean' (masked mean over the prompt).",
        ("last", "mean"),
        "contrastive loss",
    )
    loss: str = option(
        "circle",
        "Contrastive loss from dcr_kernels: circle (as in the DCR paper), supcon, or infonce (positive = another "
        "prompt of the same class).",
        ("circle", "supcon", "infonce"),
        "contrastive loss",
    )
    margin: float = option(0.4, "Circle loss relaxation margin m.", topic="contrastive loss")
    gamma: float = option(80.0, "Circle loss scale gamma.", topic="contrastive loss")
    temperature: float = option(0.1, "Temperature of supcon and infonce.", topic="contrastive loss")
    strategy: str = option(
        "ring",
        "Under torchrun / accelerate launch: how the contrastive loss sees every rank's rows; ring (key blocks "
        "passed between neighbours, O(local batch) memory) or gather (one all-gather). Same numbers either way.",
        ("ring", "gather"),
        "contrastive loss",
    )
    steps: int = option(100, "Optimizer steps.", topic="optimization")
    lr: float = option(2e-5, "Peak AdamW learning rate.", topic="optimization")
    weight_decay: float = option(0.0, "AdamW weight decay.", topic="optimization")
    schedule: str = option(
        "cosine", "Learning-rate schedule after warm-up.", ("cosine", "linear", "constant"), "optimization"
    )
    warmup_steps: int = option(0, "Linear warm-up steps.", topic="optimization")
    max_grad_norm: float = option(
        1.0, "Clip the gradient norm to this value; 0 disables clipping.", topic="optimization"
    )
    seed: int = option(0, "Seed of initialisation, data order and dropout.", topic="optimization")
    output_dir: str = option(
        "runs/train", "Run folder: metrics.jsonl, checkpoints/, and the trained model in model/.", topic="run folder"
    )
    save_every: int = option(50, "Write a checkpoint every this many steps; 0: only at the end.", topic="run folder")
    keep_checkpoints: int = option(2, "How many recent checkpoints to keep; 0 keeps all.", topic="run folder")
    resume: bool = option(
        False, "Continue from the newest checkpoint in output_dir (same settings required).", topic="run folder"
    )
    progress: bool = option(True, "Show a progress bar.", topic="run folder")
    report_to: list[str] = option(
        ["none"], "Experiment trackers beside metrics.jsonl: tensorboard, wandb, trackio or none.", topic="run folder"
    )

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "margin": 0.0 <= self.margin <= 1.0,
            "gamma": self.gamma > 0,
            "temperature": self.temperature > 0,
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
            "max_grad_norm": self.max_grad_norm >= 0,
            "lora_r": self.lora_r >= 1,
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 0,
            "report_to": set(self.report_to or []) <= set(REPORT_TO),
        }
