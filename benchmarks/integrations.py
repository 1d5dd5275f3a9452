"""The drop-ins against the libraries they replace, in the same run: loss + backward time and peak memory.

- sentence-transformers: the cached ranking loss's loss step (`calculate_loss` with backward over the
  cached embeddings: d loss / d embeddings for the whole batch) at batch 4096 and 16384, MiniLM-sized
  embeddings (D = 384, anchors and positives, mini-batches of 32). The embedding passes around it are the
  library's own in both, so this is where the two differ.
- sentence-transformers' `MultipleNegativesRankingLoss` with all four directions in the joint partition (the
  GTE "improved contrastive" loss) and hardness weighting of the in-batch negatives (strength 5),
  `compute_loss_from_embeddings` + backward, at batch 4096 and 16384, D = 384.
- sentence-transformers' `CachedGISTEmbedLoss`: the loss step (`calculate_loss` with backward over the cached
  model and guide embeddings), relative margin 0.05, at batch 4096 and 16384, D = 384. The library forms its
  similarities as a broadcast cosine (`similarity_fct(a.unsqueeze(1), b.unsqueeze(0))`: a mini-batch x B x D
  elementwise tensor, with its backward) rather than a matrix product, so its step costs B^2 D memory traffic
  times about ten: one step at 4096 takes minutes, at 16384 hours. At 16384 its first 16 mini-batches are timed
  and the time scaled to all of them (`PARTIAL`; each does the same work).
- OpenCLIP: `ClipLoss` forward + backward at B = 8192, D = 512 with a learnable logit scale; `SigLipLoss`
  forward + backward at B = 4096 and 16384, D = 512, with a learnable scale and bias.

Each measurement runs in a fresh process (one torch thread; memory as in `memory.py`: peak resident set
above the inputs and gradient-sized buffers), time the median of 3 after one warm-up.

    python benchmarks/integrations.py --out benchmarks/results/integrations_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("cached_mnrl", 4096, 384),
    ("cached_mnrl", 16384, 384),
    ("mnrl_joint_hardness", 4096, 384),
    ("mnrl_joint_hardness", 16384, 384),
    ("cached_gist", 4096, 384),
    ("cached_gist", 16384, 384),
    ("clip", 8192, 512),
    ("siglip", 4096, 512),
    ("siglip", 16384, 512),
]
# the library's cached GISTEmbed takes minutes a step at batch 4096 on this CPU (five steps took over 45 min) and
# grows as B^2: one step gives both the time and the peak
SINGLE_STEP = {("cached_gist", "library", 4096), ("cached_gist", "library", 16384)}
# ...and at 16384 one step would take hours: its first mini-batches are timed (every mini-batch of the library's
# loop does the same work, one mini-batch of anchors against all B candidates) and the time scaled to the step
PARTIAL = {("cached_gist", "library", 16384): 16}
MINI_BATCH = 32
JOINT_HARDNESS = dict(
    directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
    partition_mode="joint",
    hardness_mode="in_batch_negatives",
    hardness_strength=5.0,
)
PROVIDERS = ("ours", "library")


def _open_clip_loss(name: str = "ClipLoss"):
    """OpenCLIP's loss module loaded alone (open_clip's package import pulls in its model zoo)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(spec.submodule_search_locations[0], "loss.py")
    module_spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def _step(case: str, provider: str, b: int, d: int):
    """(inputs, step) where step() runs the loss and its backward once."""
    gen = torch.Generator().manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    positives = torch.nn.functional.normalize(anchors + torch.randn(b, d, generator=gen), dim=1)
    if case == "clip":
        from dcr_kernels.integrations.open_clip import ClipLoss

        loss_fn = ClipLoss() if provider == "ours" else _open_clip_loss()()
        image, text = anchors.requires_grad_(), positives.requires_grad_()
        scale = torch.tensor(1 / 0.07, requires_grad=True)

        def step():
            image.grad = text.grad = scale.grad = None
            loss_fn(image, text, scale).backward()

        return [image, text], step
    if case == "siglip":
        from dcr_kernels.integrations.open_clip import SigLipLoss

        loss_fn = SigLipLoss() if provider == "ours" else _open_clip_loss("SigLipLoss")()
        image, text = anchors.requires_grad_(), positives.requires_grad_()
        scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)

        def step():
            image.grad = text.grad = scale.grad = bias.grad = None
            loss_fn(image, text, scale, bias).backward()

        return [image, text], step
    from sentence_transformers.sentence_transformer import losses

    from dcr_kernels.integrations import sentence_transformers as ours

    class Model(torch.nn.Module):
        def __getitem__(self, i):
            return torch.nn.Identity()

    if case == "mnrl_joint_hardness":
        cls = ours.MultipleNegativesRankingLoss if provider == "ours" else losses.MultipleNegativesRankingLoss
        loss_fn = cls(Model(), **JOINT_HARDNESS)
        embeddings = [anchors.requires_grad_(), positives.requires_grad_()]

        def step():
            anchors.grad = positives.grad = None
            loss_fn.compute_loss_from_embeddings(embeddings, None).backward()

        return embeddings, step
    if case == "cached_gist":
        from sentence_transformers import SentenceTransformer

        sys.path.insert(0, str(ROOT / "tests"))
        from offline_minilm import minilm_dir

        model, guide = (SentenceTransformer(minilm_dir(), device="cpu") for _ in range(2))
        cls = ours.CachedGISTEmbedLoss if provider == "ours" else losses.CachedGISTEmbedLoss
        if (case, provider, b) in PARTIAL:
            _first_mini_batches(PARTIAL[case, provider, b])
        loss_fn = cls(model, guide, mini_batch_size=MINI_BATCH, margin_strategy="relative", margin=0.05)
        guide_anchors = torch.nn.functional.normalize(anchors + 0.5 * torch.randn(b, d, generator=gen), dim=1)
        guide_positives = torch.nn.functional.normalize(positives + 0.5 * torch.randn(b, d, generator=gen), dim=1)
        reps = [
            [c[i : i + MINI_BATCH].clone().requires_grad_() for i in range(0, b, MINI_BATCH)]
            for c in (anchors, positives)
        ]
        guided = [[c[i : i + MINI_BATCH] for i in range(0, b, MINI_BATCH)] for c in (guide_anchors, guide_positives)]

        def step():
            for col in reps:
                for r in col:
                    r.grad = None
            loss_fn.calculate_loss(reps, guided, with_backward=True)

        return [anchors, positives], step

    cls = ours.CachedMultipleNegativesRankingLoss if provider == "ours" else losses.CachedMultipleNegativesRankingLoss
    loss_fn = cls(Model(), mini_batch_size=MINI_BATCH)
    reps = [
        [c[i : i + MINI_BATCH].clone().requires_grad_() for i in range(0, b, MINI_BATCH)] for c in (anchors, positives)
    ]

    def step():
        for col in reps:
            for r in col:
                r.grad = None
        loss_fn.calculate_loss(reps, with_backward=True)

    return [anchors, positives], step


def _first_mini_batches(count: int) -> None:
    """Make the library's cached GISTEmbed loop over its first ``count`` mini-batches only."""
    import types

    import tqdm
    from sentence_transformers.sentence_transformer.losses import cached_gist_embed

    def trange(start: int, stop: int, step: int, **_) -> range:
        return range(start, min(stop, start + count * step), step)

    cached_gist_embed.tqdm = types.SimpleNamespace(trange=trange, tqdm=tqdm.tqdm)


def measure(case: str, provider: str, b: int, d: int) -> dict:
    """One measurement, in this process (run it in a fresh one). A SINGLE_STEP case takes one step, which
    gives both its peak memory and its time (no warm-up, no repeats)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memory
    import timing

    torch.set_num_threads(1)
    inputs, step = _step(case, provider, b, d)
    single = (case, provider, b) in SINGLE_STEP
    if not single:
        step()  # warm-up (also allocates the gradients once)
    grads = [torch.ones_like(x) for x in inputs]
    baseline = memory.current_bytes(torch.device("cpu"))
    del grads
    memory.reset_peak(torch.device("cpu"))
    seconds = timing.times(step, torch.device("cpu"), warmup=0, repeats=1, reset=lambda: None) if single else None
    if not single:
        step()
    extra = memory.peak_bytes(torch.device("cpu")) - baseline
    seconds = seconds or timing.times(step, torch.device("cpu"), warmup=0, repeats=3, reset=lambda: None)
    partial = PARTIAL.get((case, provider, b))
    scale = 1 if partial is None else (b // MINI_BATCH) / partial
    return {
        "case": case,
        "provider": provider,
        "B": b,
        "D": d,
        "median_s": timing.median(seconds) * scale,
        "extra_bytes": extra,
        **({} if partial is None else {"timed_mini_batches": partial, "mini_batches": b // MINI_BATCH}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "integrations_cpu.json")
    parser.add_argument("--scale", type=int, default=1, help="divide every batch size by this (smoke runs)")
    parser.add_argument("--one", nargs=4, metavar=("CASE", "PROVIDER", "B", "D"), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", metavar="CASE:PROVIDER:B", help="measure these rows and update them")
    args = parser.parse_args()
    if args.one:
        case, provider, b, d = args.one
        print(json.dumps(measure(case, provider, int(b), int(d))))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memory

    rows = []
    chosen = None if args.only is None else {tuple(x.split(":")) for x in args.only}
    for case, b, d in CASES:
        for provider in PROVIDERS:
            if chosen is not None and (case, provider, str(b)) not in chosen:
                continue
            cmd = [sys.executable, __file__, "--one", case, provider, str(b // args.scale), str(d)]
            done = subprocess.run(cmd, env={**os.environ, **memory.MEASURE_ENV}, capture_output=True, text=True)
            if done.returncode == 0:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:  # recorded, not raised: a library's loss running out of memory is a result
                lines = done.stderr.strip().splitlines() or [f"killed by signal {-done.returncode}"]
                failure = "out of memory" if done.returncode in (-9, 137) or "MemoryError" in done.stderr else lines[-1]
                rows.append({"case": case, "provider": provider, "B": b // args.scale, "D": d, "failed": failure})
            print(json.dumps(rows[-1]), flush=True)
    if chosen is not None and args.out.exists():  # keep the rows measured before, replace the ones measured now
        new = {(r["case"], r["provider"], r["B"]) for r in rows}
        kept = [r for r in json.loads(args.out.read_text())["rows"] if (r["case"], r["provider"], r["B"]) not in new]
        order = {(c, p, b): i for i, ((c, b, _), p) in enumerate((x, p) for x in CASES for p in PROVIDERS)}
        rows = sorted(kept + rows, key=lambda r: order.get((r["case"], r["provider"], r["B"]), len(order)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "threads": 1, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
