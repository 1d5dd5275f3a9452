"""Train a small encoder with DDP and a contrastive loss over the global batch of all ranks.

    torchrun --nproc_per_node=2 examples/ddp_contrastive.py
    torchrun --nproc_per_node=2 examples/ddp_contrastive.py --loss circle --strategy ring

Runs on CPU with gloo (NCCL when CUDA is available), or as a plain `python` process. Each rank draws its
own labelled batch (rank r draws `--batch + r` rows: local sizes may differ) from a synthetic set of
classes seen through a fixed nonlinear distortion; the loss treats the concatenated batch of all ranks as
one, so a row's positives are found on every rank. The loss module, with its learnable temperature, is
part of the DDP-wrapped model: DDP's gradient averaging then gives the gradient of the global loss, and
the logged loss and accuracy are global values. Rank 0 reports the nearest-neighbour label accuracy of
held-out embeddings before and after training.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import dcr_kernels.distributed as dd
from dcr_kernels import ContrastiveOutput

CLASSES, D_IN, D_EMB = 8, 16, 32


class Contrastive(nn.Module):
    """An MLP encoder followed by the distributed loss; forward returns the loss with global metrics."""

    def __init__(self, loss: str, strategy: str):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D_IN, 64), nn.GELU(), nn.Linear(64, D_EMB))
        if loss == "supcon":
            self.loss = dd.SupConLoss(0.2, learnable_temperature=True, strategy=strategy)
        else:
            self.loss = dd.CircleLoss(0.25, 32.0, strategy=strategy)

    def forward(self, x: Tensor, labels: Tensor) -> ContrastiveOutput:
        return self.loss(self.encoder(x), labels, return_metrics=True)


class Data:
    """Classes as Gaussian clusters, seen through a fixed random nonlinear map (the same on every rank)."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.centers = torch.randn(CLASSES, D_IN, generator=gen)
        self.mix = torch.randn(D_IN, D_IN, generator=gen) / D_IN**0.5

    def sample(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, CLASSES, (n,), generator=gen)
        z = self.centers[labels] + 1.2 * torch.randn(n, D_IN, generator=gen)
        return torch.tanh(z @ self.mix) + 0.3 * z, labels


@torch.no_grad()
def nearest_neighbour_accuracy(encoder: nn.Module, x: Tensor, labels: Tensor) -> float:
    """Fraction of held-out rows whose most similar other row (cosine) has the same label."""
    e = nn.functional.normalize(encoder(x), dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(float("-inf"))
    return float((labels[sim.argmax(dim=1)] == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=("supcon", "circle"), default="supcon")
    parser.add_argument("--strategy", choices=("gather", "ring"), default="gather")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64, help="rows per rank (rank r draws batch + r)")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    device = torch.device("cpu")
    if distributed:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = Contrastive(args.loss, args.strategy).to(device)
    ddp = DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr)
    data = Data()
    held_out = [t.to(device) for t in data.sample(512, torch.Generator().manual_seed(10_000))]
    gen = torch.Generator().manual_seed(1 + rank)
    if rank == 0:
        before = nearest_neighbour_accuracy(model.encoder, *held_out)
        print(f"{world} rank(s), {args.loss} loss, {args.strategy} strategy; held-out 1-NN accuracy {before:.3f}")

    for step in range(1, args.steps + 1):
        x, labels = (t.to(device) for t in data.sample(args.batch + rank, gen))
        out = ddp(x, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if rank == 0 and (step % 25 == 0 or step == 1):
            extra = f"  temperature {float(model.loss.temperature.detach()):.3f}" if args.loss == "supcon" else ""
            print(
                f"step {step:4d}  global loss {out.loss.item():.4f}  in-batch accuracy {float(out.accuracy):.3f}  "
                f"rows {out.rows_counted + out.rows_dropped}{extra}"
            )

    if rank == 0:
        after = nearest_neighbour_accuracy(model.encoder, *held_out)
        print(f"held-out 1-NN accuracy {before:.3f} -> {after:.3f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
