"""Experiment tracking next to the JSONL metrics log: TensorBoard, Weights & Biases or Trackio, each
imported only when asked for (`--report-to tensorboard wandb trackio`, or none)."""

from __future__ import annotations

from numbers import Number
from pathlib import Path
from typing import Any

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, Number) and not isinstance(v, bool) and k != "step"}


class Trackers:
    """The trackers of one run; `log` sends a metrics record (its numbers, at its step) to each."""

    def __init__(self, names: list[str], folder: Path, project: str, settings: dict[str, Any]) -> None:
        unknown = sorted(set(names) - set(REPORT_TO))
        if unknown:
            raise ValueError(f"report_to: unknown tracker(s) {unknown}; choose from {list(REPORT_TO)}")
        self.sinks = []
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("--report-to tensorboard needs tensorboard: pip install tensorboard") from err
            writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
            writer.add_text("settings", "\n".join(f"{k}: {v}" for k, v in settings.items()))
            self.sinks.append(("tensorboard", writer))
        if "wandb" in names:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("--report-to wandb needs wandb: pip install wandb") from err
            self.sinks.append(("wandb", wandb.init(project=project, dir=str(folder), config=settings)))
        if "trackio" in names:
            try:
                import trackio
            except ImportError as err:
                raise ImportError("--report-to trackio needs trackio: pip install trackio") from err
            trackio.init(project=project, config=settings)
            self.sinks.append(("trackio", trackio))

    def log(self, record: dict[str, Any], prefix: str) -> None:
        scalars = _scalars(record)
        step = int(record.get("step", 0))
        split = record.get("split")
        tag = f"{prefix}/{split}" if split else prefix
        for kind, sink in self.sinks:
            if kind == "tensorboard":
                for key, value in scalars.items():
                    sink.add_scalar(f"{tag}/{key}", value, step)
            else:
                sink.log({f"{tag}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        for kind, sink in self.sinks:
            if kind == "tensorboard":
                sink.close()
            else:  # wandb's run and trackio
                sink.finish()
