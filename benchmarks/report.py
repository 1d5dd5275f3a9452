"""Markdown tables from the sweep, budget and memory JSON, written between markers in RESULTS.md.

The tables compare like with like: the chunked backend's InfoNCE (cross mode) against the eager dense
cross-entropy (CLIP / MNRL) and the GradCache-style loss, and its SupCon and Circle against
pytorch-metric-learning and eager dense implementations of the same losses. Ratios are chunked / peer
(time: below 1 is faster; memory: peak above inputs and gradients).

    python benchmarks/report.py --sweep benchmarks/results/cpu_*.json --budget benchmarks/results/budget_cpu.json \\
        --memory benchmarks/results/memory_cpu.json --into benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "<!-- begin generated tables -->", "<!-- end generated tables -->"
LOSSES = {"info_nce": "InfoNCE (cross)", "supcon": "SupCon (self)", "circle": "Circle (self)"}
PEERS = {
    "info_nce": ("dense", "gradcache", "triton", "inf-cl"),
    "supcon": ("dense", "pml", "triton"),
    "circle": ("dense", "pml", "triton"),
}
MIB = 2**20


def _index(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["loss"], r["provider"], r["mode"], r["batch"], r["dim"]): r for r in rows}


def _fmt_time(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['median_s']:.3g}" if r.get("ok") else _failure(r)


def _fmt_mem(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['extra_bytes'] / MIB:,.0f}" if r.get("ok") else _failure(r)


def _failure(r: dict) -> str:
    error = r.get("error", "")
    return "OOM" if "memory" in error or "exit -9" in error else ("timeout" if "timeout" in error else "failed")


def _ratio(a: dict | None, b: dict | None, field: str) -> str:
    if not (a and b and a.get("ok") and b.get("ok") and b.get(field)):
        return "-"
    r = a[field] / b[field]
    if r == 0:
        return "0"
    return f"{r:.2f}" if r >= 0.1 else f"1/{1 / r:.0f}"


def comparison(rows: list[dict], sizes: tuple[int, ...], dim: int, mode: str = "fwd_bwd") -> str:
    """Per loss and size: each peer's time and memory, and chunked / peer ratios."""
    idx = _index(rows)
    out = [
        "| loss | B | provider | time (s) | chunked time / this | peak above inputs (MiB) | chunked memory / this |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for loss, title in LOSSES.items():
        for b in sizes:
            ours = idx.get((loss, "chunked", mode, b, dim))
            if ours is None:
                continue
            for provider in ("chunked", *PEERS[loss]):
                r = idx.get((loss, provider, mode, b, dim))
                if r is None or r.get("skipped"):
                    continue
                out.append(
                    f"| {title} | {b} | {provider} | {_fmt_time(r)} | "
                    f"{_ratio(ours, r, 'median_s') if provider != 'chunked' else ''} | {_fmt_mem(r)} | "
                    f"{_ratio(ours, r, 'extra_bytes') if provider != 'chunked' else ''} |"
                )
    return "\n".join(out)


def targets(rows: list[dict], budget: list[dict], batch: int = 8192, dim: int = 256) -> str:
    """The acceptance targets: time <= 0.6 x and memory <= 1/20 of eager dense at `batch`, largest batch
    >= 8 x eager dense's within the budget, for each loss."""
    idx = _index(rows)
    big = {(r["loss"], r["provider"]): r for r in budget if r["dim"] == dim}
    out = [
        f"| loss (vs eager dense) | time ratio at B={batch} (target <= 0.6) | memory ratio (target <= 1/20) "
        "| largest-batch ratio (target >= 8) |",
        "|---|---:|---:|---:|",
    ]
    for loss, title in LOSSES.items():
        ours, dense = idx.get((loss, "chunked", "fwd_bwd", batch, dim)), idx.get((loss, "dense", "fwd_bwd", batch, dim))
        b_ours, b_dense = big.get((loss, "chunked")), big.get((loss, "dense"))
        grow = "-"
        if b_ours and b_dense and b_dense["largest"]:
            sign = ">= " if b_ours["bound"] != "memory" else ""
            grow = f"{sign}{b_ours['largest'] / b_dense['largest']:.1f}"
        out.append(f"| {title} | {_ratio(ours, dense, 'median_s')} | {_ratio(ours, dense, 'extra_bytes')} | {grow} |")
    return "\n".join(out)


def largest(budget: list[dict]) -> str:
    """The largest batch of each provider within the budget."""
    out = ["| loss | D | provider | largest B | smallest failing B | search ended by |", "|---|---:|---|---:|---:|---|"]
    for r in sorted(budget, key=lambda r: (list(LOSSES).index(r["loss"]), r["dim"], r["provider"])):
        lower = "" if r["bound"] == "memory" else ">= "
        failing = r["smallest_failing"] or "-"
        out.append(
            f"| {LOSSES[r['loss']]} | {r['dim']} | {r['provider']} | {lower}{r['largest']} | {failing} | {r['bound']} |"
        )
    return "\n".join(out)


def memory_table(doc: dict) -> str:
    """Chunked against the dense reference backend (memory.py's figures)."""
    by = {(r["loss"], r["provider"]): r for r in doc["rows"]}
    cap = f"over {doc['cap_bytes'] / 2**30:g} GiB"
    out = [
        f"| loss (B={doc['batch']}, D={doc['dim']}, fwd+bwd) | chunked (MiB) | reference (MiB) | chunked / reference |",
        "|---|---:|---:|---:|",
    ]
    for loss, title in LOSSES.items():
        c, r = by.get((loss, "chunked")), by.get((loss, "reference"))
        ref = _fmt_mem(r) if r and r.get("ok") else cap
        ratio = doc["chunked_over_reference"].get(loss, "-").split(" (")[0]
        out.append(f"| {title} | {_fmt_mem(c)} | {ref} | {ratio} |")
    return "\n".join(out)


def _machine(m: dict) -> str:
    hw = m["gpu"] or f"{m['cpu']}, {m['cpu_count']} cores ({m['torch_threads']} torch threads)"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return f"{hw}; {m['memory_bytes'] / 2**30:.0f} GiB; Python {m['python']}, {versions}; {m['date']}, {m['commit']}"


def render(sweeps: list[dict], budget: dict | None, memory: dict | None, sizes=(4096, 16384), target_batch=8192) -> str:
    rows = [r for doc in sweeps for r in doc["rows"]]
    budget_rows = budget["rows"] if budget else []
    parts = []
    for doc in sweeps:
        c = doc["config"]
        threads = ",".join(str(t) for t in sorted({r["threads"] for r in doc["rows"] if r.get("threads")}))
        parts.append(
            f"Sweep on {_machine(doc['machine'])}: {c['dtype']}, {threads} torch thread(s) per measurement, "
            f"median of {c['repeats']} x {c['rounds']} runs after {c['warmup']} warm-up."
        )
    dims = sorted({r["dim"] for r in rows})
    for dim in dims:
        parts.append(f"#### Forward+backward, D = {dim}\n\n{comparison(rows, sizes, dim)}")
        parts.append(f"#### Forward only, D = {dim}\n\n{comparison(rows, sizes, dim, 'fwd')}")
    parts.append(f"#### Targets (chunked vs eager dense, D = 256)\n\n{targets(rows, budget_rows, target_batch)}")
    if budget:
        gib = budget["config"]["budget_gib"]
        parts.append(f"#### Largest batch within {gib:g} GiB ({budget['criterion']})\n\n{largest(budget_rows)}")
    if memory:
        parts.append(f"#### Chunked vs the dense reference backend\n\n{memory_table(memory)}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", type=Path, nargs="+", required=True)
    p.add_argument("--budget", type=Path)
    p.add_argument("--memory", type=Path)
    p.add_argument("--into", type=Path, help="file with the markers; without it the tables are printed")
    p.add_argument("--sizes", type=lambda t: tuple(int(x) for x in t.split(",")), default=(4096, 16384))
    p.add_argument("--target-batch", type=int, default=8192)
    args = p.parse_args(argv)

    def load(path: Path | None) -> dict | None:
        return json.loads(path.read_text()) if path else None

    text = render([load(s) for s in args.sweep], load(args.budget), load(args.memory), args.sizes, args.target_batch)
    if not args.into:
        print(text)
        return
    doc = args.into.read_text() if args.into.exists() else f"{BEGIN}\n{END}\n"
    block = f"{BEGIN}\n\n{text}\n\n{END}"
    args.into.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))


if __name__ == "__main__":
    main()
