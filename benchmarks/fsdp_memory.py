"""Measured memory per rank of the stages against `dcr plan`, on the CPU: SmolLM2-135M-Instruct, fp32, 2 steps,
on 1 process and on 2 gloo ranks (torchrun). The DCR stage at layer 15, a 64-prompt batch of the matched
twins cut to 32 tokens, gradient caching at micro-batch 16: plain, with LoRA (r 16) and with --fsdp; the
alignment stage (every layer trained), 16 pairs of at most 64 tokens in micro-batches of 4: plain and with
--fsdp.

Each rank samples its anonymous resident memory (RssAnon: what tensors allocate) every 2 ms through the
stage; the peak minus the value before the model is loaded is what the plan predicts (weights, gradients,
optimizer state, FSDP's gathered layers, activations, the loss). The model is a bf16 copy of the embedded
one, loaded in fp32, so that its weights are allocated like on a GPU (an fp32 file would stay mapped and
only its touched pages be resident); large buffers are returned to the system when freed (a fixed
MALLOC_MMAP_THRESHOLD_), so that the peak is live memory rather than the allocator's retention. The
rank's trained weights, gradients and AdamW state come from the metrics log (`trained_state_mb`). The
final save is measured apart: gathering a sharded model for the Hugging Face folder costs a full copy.

    python benchmarks/fsdp_memory.py                      # every case; writes benchmarks/results/fsdp_memory.json
    torchrun --nproc_per_node=2 benchmarks/fsdp_memory.py --case fsdp --out runs/mem   # one case
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (ranks, fsdp, lora, stage)
    "one process": (1, False, False, "refine"),
    "2 ranks, data parallel": (2, False, False, "refine"),
    "2 ranks, FSDP": (2, True, False, "refine"),
    "one process, LoRA": (1, False, True, "refine"),
    "2 ranks, FSDP + LoRA": (2, True, True, "refine"),
    "align, one process": (1, False, False, "align"),
    "align, 2 ranks, FSDP": (2, True, False, "align"),
}
LAYER, BATCH, MICRO, TOKENS, LORA_R = 15, 64, 16, 32, 16
ALIGN_BATCH, ALIGN_MICRO, ALIGN_TOKENS = 16, 4, 64


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
    """The largest RssAnon seen in each phase while running (`phase` is switched from outside)."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.phase, self.peaks = "train", {"train": rss_anon()}
        self.every_s, self.done = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss_anon())
            time.sleep(self.every_s)

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def run_case(name: str, out: str, model: str) -> None:
    """One case on this rank: the measured peak and trained state, and the plan's, as one JSON line."""
    from dcr.modeling.model import model_depth
    from dcr.planning.memory import Architecture, Setting, plan
    from dcr.planning.table import architecture
    from dcr.training.align import align
    from dcr.training.align_config import AlignConfig
    from dcr.training.jsonl_log import read_log
    from dcr.training.refine import refine
    from dcr.training.refine_config import RefineConfig

    world, fsdp, lora, stage = CASES[name]
    common = dict(steps=2, save_every=0, lora=lora, lora_r=LORA_R, fsdp=fsdp, dtype="fp32", output_dir=out,
                  progress=False, model=model)  # fmt: skip
    if stage == "refine":
        config = RefineConfig(layer=LAYER, batch_size=BATCH, micro_batch_size=MICRO, max_length=TOKENS, eval_every=0,
                              **common)  # fmt: skip
        sizes = dict(micro_batch=MICRO, seq_len=TOKENS, batch=BATCH)
    else:
        config = AlignConfig(examples=200, refusal_share=0.25, batch_size=ALIGN_BATCH, micro_batch_size=ALIGN_MICRO,
                             max_length=ALIGN_TOKENS, **common)  # fmt: skip
        sizes = dict(micro_batch=ALIGN_MICRO, seq_len=ALIGN_TOKENS, batch=ALIGN_BATCH)
    arch: Architecture = architecture(model)
    assert model_depth(model) == arch.layers
    setting = Setting(stage=stage, layer=LAYER, gpus=world, fsdp=fsdp, lora_r=LORA_R if lora else None,
                      weights="fp32", compute="fp32", **sizes)  # fmt: skip
    before = rss_anon()
    with PeakSampler() as sampler:
        _mark_the_final_save(sampler)
        (refine if stage == "refine" else align)(config)
    main = os.environ.get("RANK", "0") == "0"
    steps = [r for r in read_log(Path(out) / "metrics.jsonl") if "loss" in r] if main else []
    predicted = plan(arch, setting)
    print(json.dumps({
        "case": name, "rank": int(os.environ.get("RANK", "0")), "world_size": world,
        "measured_peak_mb": round((sampler.peaks["train"] - before) / 2**20, 1),
        "final_save_peak_mb": round((sampler.peaks.get("save", before) - before) / 2**20, 1),
        "planned_peak_mb": round(predicted["peak"] / 2**20, 1),
        "trained_state_mb": steps[-1]["trained_state_mb"] if steps else None,
        "planned_trained_state_mb": round((2 * predicted["gradients"] + predicted["optimizer"]) / 2**20, 1),
        "plan": {k: round(v / 2**20, 1) for k, v in predicted.items()},
    }), flush=True)  # fmt: skip


def _mark_the_final_save(sampler: PeakSampler) -> None:
    """Count the saving of the model (and, sharded, its gathering) apart from training: the plan is of
    training; gathering a sharded model for the Hugging Face folder costs a full copy in host memory."""
    from dcr.training import loop

    for name in ("full_state_dict", "save_refined"):
        original = getattr(loop, name)

        def marked(*args, _original=original, **kwargs):
            sampler.phase = "save"
            return _original(*args, **kwargs)

        setattr(loop, name, marked)


def _bf16_copy(folder: Path) -> None:
    from dcr.modeling.model import load_model

    model, tokenizer = load_model("default", dtype="bf16")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def drive(out_file: Path) -> None:
    """Every case in its own processes; the rows and a table."""
    rows = []
    model = Path(tempfile.mkdtemp(prefix="dcr-smollm2-bf16-"))
    _bf16_copy(model)
    # a fixed mmap threshold: large buffers go back to the system when freed, so RssAnon follows live memory
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "131072"}
    for name, (world, *_) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            me = [str(Path(__file__).resolve()), "--case", name, "--out", str(Path(tmp) / "run"), "--model", str(model)]
            launch = ["-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_port=29533"]
            cmd = [sys.executable, *(launch if world > 1 else []), *me]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            for row in sorted(lines, key=lambda r: r["rank"]):
                row["plan_error"] = round(row["planned_peak_mb"] / row["measured_peak_mb"] - 1, 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    import torch

    env_info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                "cpu_count": os.cpu_count()}  # fmt: skip
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps({"environment": env_info, "rows": rows}, indent=1) + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    head = (
        "| case | rank | trained state (MB) | measured peak (MB) | planned peak (MB) | plan - measured | final save |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        state = "" if r["trained_state_mb"] is None else f"{r['trained_state_mb']:.0f}"
        measured, planned, error, save = (r[k] for k in ("measured_peak_mb", "planned_peak_mb", "plan_error",
                                                         "final_save_peak_mb"))  # fmt: skip
        lines.append(
            f"| {r['case']} | {r['rank']} | {state} | {measured:.0f} | {planned:.0f} | {error:+.1%} | {save:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=list(CASES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--model", default="default")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "fsdp_memory.json")
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.out, args.model)
    else:
        drive(args.results)


if __name__ == "__main__":
    main()
