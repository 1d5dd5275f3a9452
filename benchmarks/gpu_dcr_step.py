"""Seconds and peak memory of one DCR step on a GPU at the architectures people refine: randomly
initialised models with Qwen2.5-1.5B's and LLaMA-3-8B's configurations (config only, nothing downloaded),
bf16, layer l at half the depth, contrastive batch 256 and 1024 of 64-token prompts, gradient caching at
micro-batch 32, Circle loss through the fused kernels, the layers up to l trained fully or through LoRA
(r 16) or fully with the decoder layers under FSDP2 (`dcr.modeling.sharding`, one rank: fp32 master
weights, bf16 compute), AdamW. Each row has the peak `dcr plan` predicts beside the measured one. Results
go to benchmarks/results/gpu_dcr_step_<date>.json with the device and versions.

    python benchmarks/gpu_dcr_step.py [--budget-s 420]
    python benchmarks/gpu_dcr_step.py --tiny --device cpu      # checks the script on a CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {
    "qwen2.5-1.5b": ("Qwen2Config", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936)),
    "llama-3-8b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)),
    "tiny": ("LlamaConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512)),
}  # fmt: skip
SEQ, MICRO = 64, 32


def build(arch: str, device: torch.device, dtype: torch.dtype):
    import transformers

    cls, sizes = ARCHITECTURES[arch]
    config = getattr(transformers, cls)(**sizes, max_position_embeddings=512, tie_word_embeddings=False)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def one_rank_group(device: torch.device) -> None:
    """A process group of this process alone, for FSDP on one device."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def step(arch: str, batch: int, lora: bool, device: torch.device, dtype: torch.dtype, fsdp: bool = False) -> dict:
    from dcr.modeling.layer_states import represent
    from dcr.modeling.sharding import shard_layers
    from dcr.modeling.trainable import add_lora, freeze_above, trainable_parameters
    from dcr.planning.memory import Architecture, Setting, plan
    from dcr.training.gradcache import contrastive_backward
    from dcr.training.objective import make_loss

    torch.manual_seed(0)
    model = build(arch, device, dtype)
    layer = model.config.num_hidden_layers // 2
    freeze_above(model, layer)
    if lora:
        model = add_lora(model, layer, r=16, alpha=32.0)
    if fsdp:
        one_rank_group(device)
        shard_layers(model, compute_dtype=torch.bfloat16 if dtype == torch.bfloat16 else None, mean=True)
    model.train()
    params = list(trainable_parameters(model).values())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (batch, SEQ), device=device)
    mask = torch.ones_like(ids)
    labels = torch.arange(batch, device=device) % 2
    micro = [slice(k, k + MICRO) for k in range(0, batch, MICRO)]

    def embed(rows: slice) -> torch.Tensor:
        return represent(model, ids[rows], mask[rows], layer)

    loss_fn = make_loss("circle", center=True)

    def one() -> float:
        contrastive_backward(embed, micro, labels, loss_fn, cache=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return 0.0

    one()  # warm-up: kernel compiles, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    trained = sum(p.numel() for p in params)
    name = "fp32" if dtype == torch.float32 else "bf16"
    setting = Setting(layer=layer, fsdp=fsdp, lora_r=16 if lora else None, weights=name, compute=name,
                      micro_batch=MICRO, seq_len=SEQ, batch=batch)  # fmt: skip
    planned = plan(Architecture.from_config(model.config), setting)["peak"]
    return {"arch": arch, "batch": batch, "lora": lora, "fsdp": fsdp, "layer": layer, "trained_params": trained,
            "step_s": round(seconds, 3), "peak_gib": None if peak is None else round(peak / 2**30, 2),
            "plan_gib": round(planned / 2**30, 2)}  # fmt: skip


def measure_all(device: torch.device, archs: list[str], batches: tuple[int, ...], budget_s: float) -> list[dict]:
    """Every (architecture, batch, LoRA / full / FSDP) step that fits in the time budget, most important first."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    deadline = time.monotonic() + budget_s
    rows = []
    for arch in archs:
        for batch in batches:
            for lora, fsdp in ((True, False), (False, False), (False, True)):
                if time.monotonic() > deadline:
                    return rows
                try:
                    rows.append(step(arch, batch, lora, device, dtype, fsdp))
                except torch.OutOfMemoryError:
                    rows.append({"arch": arch, "batch": batch, "lora": lora, "fsdp": fsdp, "error": "out of memory"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--tiny", action="store_true", help="the tiny architecture only (a script check)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    archs, batches = (["tiny"], (64,)) if args.tiny else (["qwen2.5-1.5b", "llama-3-8b"], (256, 1024))
    rows = measure_all(device, archs, batches, args.budget_s)
    import triton

    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_dcr_step_{env['date'][:10]}{'_tiny' if args.tiny else ''}.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
