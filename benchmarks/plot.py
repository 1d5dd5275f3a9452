"""Log-log plots of time and peak memory against batch size, one line per provider, from sweep JSON.

One PNG per (device, dtype, dim) and quantity, with a panel per loss: forward+backward solid, forward
only dashed. Memory is the peak above the inputs and their gradients.

    python benchmarks/plot.py benchmarks/results/cpu_*.json --out-dir docs
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

LOSS_TITLES = {"info_nce": "InfoNCE (cross)", "supcon": "SupCon (self)", "circle": "Circle (self)"}
QUANTITIES = {"time": ("median_s", "seconds", 1.0), "memory": ("extra_bytes", "MiB above inputs + grads", 2**-20)}


def _batch_label(x: float, _pos: int) -> str:
    return f"{x / 1024:g}k" if x >= 1024 else f"{x:g}"


def load_rows(paths: list[Path]) -> list[dict]:
    """The successful rows of every sweep file."""
    return [r for p in paths for r in json.loads(p.read_text())["rows"] if r.get("ok")]


def plot(rows: list[dict], out_dir: Path, prefix: str = "bench") -> list[Path]:
    """Write the PNGs; returns their paths."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["dim"])].append(r)
    providers = sorted({r["provider"] for r in rows})
    colors = {p: f"C{i}" for i, p in enumerate(providers)}
    written = []
    for (device, dtype, dim), group in sorted(groups.items()):
        losses = [loss for loss in LOSS_TITLES if any(r["loss"] == loss for r in group)]
        for quantity, (field, unit, factor) in QUANTITIES.items():
            fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 4), squeeze=False)
            for ax, loss in zip(axes[0], losses, strict=True):
                for provider in providers:
                    for mode, style in (("fwd_bwd", "-o"), ("fwd", "--.")):
                        pts = sorted(
                            (r["batch"], r[field] * factor)
                            for r in group
                            if (r["loss"], r["provider"], r["mode"]) == (loss, provider, mode) and r.get(field)
                        )
                        if pts:
                            label = provider if mode == "fwd_bwd" else None
                            ax.plot(*zip(*pts, strict=True), style, color=colors[provider], label=label)
                ax.set(xscale="log", yscale="log", title=LOSS_TITLES[loss], xlabel="batch size B", ylabel=unit)
                sizes = sorted({r["batch"] for r in group})
                ax.xaxis.set_major_locator(ticker.FixedLocator(sizes))
                ax.xaxis.set_minor_locator(ticker.NullLocator())
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(_batch_label))
                ax.grid(True, which="both", alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
            fig.suptitle(f"{quantity}: {device}, {dtype}, D = {dim} (solid: forward+backward, dashed: forward)")
            fig.tight_layout()
            path = out_dir / f"{prefix}_{device.split(':')[0]}_{dtype}_d{dim}_{quantity}.png"
            out_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="+", help="sweep JSON files")
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    for path in plot(load_rows(args.results), args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
