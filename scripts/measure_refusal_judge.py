"""Print the refusal judge's and XSTest's prefix list's precision, recall, F1 and accuracy on the labelled
sample shipped in dcr/data/refusal_labels/, per split and origin."""

from __future__ import annotations

from dcr.evaluation.refusal import load_labels, measure


def main() -> None:
    """Print both detectors' metrics on each split of the labelled sample, overall and by origin."""
    rows = load_labels()
    print("| split | origin | items | detector | precision | recall | F1 | accuracy |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for split in ("dev", "heldout"):
        for origin in (None, "generated", "hand-written"):
            part = [r for r in rows if r["split"] == split and origin in (None, r["origin"])]
            for name, m in measure(part).items():
                print(
                    f"| {split} | {origin or 'all'} | {m['n']} | {name} | {m['precision']:.3f} | "
                    f"{m['recall']:.3f} | {m['f1']:.3f} | {m['accuracy']:.3f} |"
                )


if __name__ == "__main__":
    main()
