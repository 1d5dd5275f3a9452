"""The distributed losses on gloo with 2 and 3 CPU processes against the single-process loss on the
concatenated batch: the loss value, the metrics, and every gradient (embeddings, the inputs and parameters
of a DDP-wrapped model, the learnable temperature) after DDP's averaging, for each loss, mode and strategy,
with uneven local sizes and positives on other ranks. Then: a bad input on one rank raises on every rank.

Each world size is spawned once (a module fixture) and runs every case; the tests read its reports."""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from spawn_ranks import rank_reports
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dcr_kernels as dk
import dcr_kernels.distributed as dd

QUERY_SIZES = {2: [5, 3], 3: [4, 6, 2]}  # even sizes where self-mode InfoNCE pairs two views per rank
EVEN_SIZES = {2: [6, 2], 3: [4, 6, 2]}
KEY_SIZES = {2: [7, 3], 3: [4, 8, 3]}  # cross mode: extra negatives on some ranks
MODES = [
    ("info_nce", "self"),
    ("info_nce", "cross"),
    ("info_nce", "symmetric"),
    ("info_nce", "positives"),  # explicit positives: random global key rows, mostly on other ranks
    ("supcon", "self"),
    ("supcon", "cross"),
    ("circle", "self"),
    ("circle", "cross"),
    ("sigmoid", "cross"),
    ("sigmoid", "positives"),
]
STRATEGIES = ("gather", "ring")
DTYPES = {"float64": (torch.float64, 1e-10), "float32": (torch.float32, 1e-4)}
CASES = [
    (loss, mode, strategy, dtype) for (loss, mode), strategy, dtype in itertools.product(MODES, STRATEGIES, DTYPES)
]
D_IN, DIM = 6, 8


class Net(nn.Module):
    """A linear embedding with a learnable log-scale (the temperature is exp(-log_scale))."""

    def __init__(self, learnable_temperature: bool):
        super().__init__()
        self.proj = nn.Linear(D_IN, DIM)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.2))) if learnable_temperature else None

    def forward(self, x):
        return self.proj(x), (torch.exp(-self.log_scale) if self.log_scale is not None else None)


def _global_batch(loss: str, mode: str, world: int, seed: int, dtype: torch.dtype) -> dict:
    """The same global batch on every rank: inputs, labels, sizes, and the single-process positives."""
    gen = torch.Generator().manual_seed(seed)
    sizes = EVEN_SIZES[world] if (loss, mode) == ("info_nce", "self") else QUERY_SIZES[world]
    key_sizes = {"self": sizes, "symmetric": sizes}.get(mode, KEY_SIZES[world])
    m, n = sum(sizes), sum(key_sizes)
    batch = dict(sizes=sizes, key_sizes=key_sizes, x=torch.randn(m, D_IN, generator=gen, dtype=dtype))
    batch["xk"] = None if mode == "self" else torch.randn(n, D_IN, generator=gen, dtype=dtype)
    batch["labels"] = torch.randint(0, 3, (m,), generator=gen) * 5 - 3
    batch["key_labels"] = torch.randint(0, 3, (n,), generator=gen) * 5 - 3
    starts, key_starts = dd.comm.offsets(sizes), dd.comm.offsets(key_sizes)
    if mode == "self":
        batch["positive"] = torch.cat([s + (torch.arange(b) + b // 2) % b for s, b in zip(starts, sizes, strict=True)])
    elif mode == "positives":
        batch["positive"] = torch.randint(0, n, (m,), generator=gen)
    else:
        batch["positive"] = torch.cat([s + torch.arange(b) for s, b in zip(key_starts, sizes, strict=True)])
    batch["weight"] = torch.rand(m, generator=gen, dtype=dtype) + 0.5
    return batch


def _loss(
    module, loss: str, mode: str, q, k, temperature, batch, rows: slice, key_rows: slice, weighted: bool, reduction
):
    """The loss through `module` (dcr_kernels or dcr_kernels.distributed) on the given rows of the batch."""
    kw = dict(return_metrics=True, reduction=reduction, weight=batch["weight"][rows] if weighted else None)
    if module is dd:
        kw["strategy"] = batch["strategy"]
    labels, key_labels = batch["labels"][rows], batch["key_labels"][key_rows]
    if loss == "sigmoid":  # the learnable temperature's inverse as SigLIP's learnable scale t
        positive = batch["positive"][rows] if module is dk or mode == "positives" else None
        kw.pop("return_metrics")
        value = module.sigmoid_loss(q, k, positive=positive, scale=1 / temperature, bias=-1.5, **kw)
        return SimpleNamespace(loss=value, accuracy=0.0, rows_counted=0, rows_dropped=0)  # no metrics to compare
    if loss == "info_nce":
        positive = batch["positive"][rows] if module is dk or mode == "positives" else None
        positive = None if mode == "symmetric" else positive
        return module.info_nce(q, k, positive=positive, temperature=temperature, symmetric=mode == "symmetric", **kw)
    fn = module.supcon_loss if loss == "supcon" else module.circle_loss
    extra = dict(temperature=temperature) if loss == "supcon" else dict(margin=0.25, gamma=16.0)
    return fn(q, labels, k, None if k is None else key_labels, **extra, **kw)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-30))


def _run_case(rank: int, world: int, index: int, loss: str, mode: str, strategy: str, dtype: torch.dtype) -> dict:
    batch = _global_batch(loss, mode, world, seed=1000 + index, dtype=dtype)
    batch["strategy"] = strategy
    weighted, reduction = index % 3 == 1, "sum" if index % 4 == 2 else "mean"
    torch.manual_seed(index)
    net = Net(learnable_temperature=loss != "circle").to(dtype)
    ref = copy.deepcopy(net)

    x_ref = batch["x"].clone().requires_grad_()
    xk_ref = None if batch["xk"] is None else batch["xk"].clone().requires_grad_()
    q_ref, temperature = ref(x_ref)
    k_ref = None if xk_ref is None else ref(xk_ref)[0]
    for t in (q_ref, k_ref):
        if t is not None:
            t.retain_grad()
    everything = slice(None)
    want = _loss(dk, loss, mode, q_ref, k_ref, temperature, batch, everything, everything, weighted, reduction)
    want.loss.backward()

    start, key_start = dd.comm.offsets(batch["sizes"])[rank], dd.comm.offsets(batch["key_sizes"])[rank]
    rows = slice(start, start + batch["sizes"][rank])
    key_rows = slice(key_start, key_start + batch["key_sizes"][rank])
    model = DistributedDataParallel(net)
    x = batch["x"][rows].clone().requires_grad_()
    xk = None if batch["xk"] is None else batch["xk"][key_rows].clone().requires_grad_()
    q, temperature = model(x if xk is None else torch.cat([x, xk]))
    q, k = (q, None) if xk is None else (q[: x.shape[0]], q[x.shape[0] :])
    q.retain_grad()
    if k is not None:
        k.retain_grad()
    got = _loss(dd, loss, mode, q, k, temperature, batch, rows, key_rows, weighted, reduction)
    got.loss.backward()

    errors = {"loss": _rel(got.loss.detach(), want.loss.detach())}
    errors["embeddings"] = _rel(q.grad / world, q_ref.grad[rows])
    errors["inputs"] = _rel(x.grad / world, x_ref.grad[rows])
    if k is not None:
        errors["key embeddings"] = _rel(k.grad / world, k_ref.grad[key_rows])
        errors["key inputs"] = _rel(xk.grad / world, xk_ref.grad[key_rows])
    for name, p in net.named_parameters():
        errors[name] = _rel(p.grad, dict(ref.named_parameters())[name].grad)
    same_metrics = (got.rows_counted, got.rows_dropped) == (want.rows_counted, want.rows_dropped)
    same_metrics &= math.isclose(float(got.accuracy), float(want.accuracy), abs_tol=1e-12)
    return dict(errors=errors, metrics=same_metrics)


def _bad_calls(rank: int) -> dict:
    """Calls where one rank's input is wrong; each must raise on every rank, and the ranks stay in step."""
    x = torch.randn(4, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    bad = {
        "dim": lambda: dd.info_nce(torch.randn(4, 7 if rank == 1 else 8, dtype=torch.float64)),
        "dtype": lambda: dd.info_nce(x.float() if rank == 1 else x),
        "nan": lambda: dd.info_nce(torch.full_like(x, float("nan")) if rank == 1 else x),
        "strategy": lambda: dd.info_nce(x, strategy="ring" if rank == 1 else "gather"),
        "mode": lambda: dd.supcon_loss(x, labels, *((x, labels) if rank == 1 else ())),
        "missing key labels": lambda: dd.circle_loss(x, labels, x, labels if rank == 0 else None),
        "positive range": lambda: dd.info_nce(x, x, positive=torch.tensor([0, 1, 2, 100 if rank == 0 else 3])),
        "own positive": lambda: dd.info_nce(
            x, positive=torch.tensor([1, 0, 3, 2]) if rank == 0 else 4 + torch.arange(4)
        ),
        # unnormalised rows at 1e20 on one rank overflow float32 logits: refused on every rank, as in one process
        "overflow info_nce": lambda: dd.info_nce(x.float() * (1e20 if rank == 1 else 1.0), normalize=False),
        "overflow supcon": lambda: dd.supcon_loss(x.float() * (1e20 if rank == 1 else 1.0), labels, normalize=False),
        "overflow circle": lambda: dd.circle_loss(x.float() * (1e20 if rank == 0 else 1.0), labels, normalize=False),
        "sigmoid scale": lambda: dd.sigmoid_loss(x, x, scale=float("nan") if rank == 1 else 10.0),
        "sigmoid positive range": lambda: dd.sigmoid_loss(x, x, positive=torch.tensor([0, 1, 2, 100 if rank else 3])),
        "sigmoid bias on one rank": lambda: dd.sigmoid_loss(x, x, bias=-10.0 if rank == 0 else -5.0),
    }
    out = {}
    for name, call in bad.items():
        try:
            call()
            out[name] = None
        except (TypeError, ValueError) as exc:
            out[name] = (type(exc).__name__, str(exc))
    out["still in step"] = bool(torch.isfinite(dd.info_nce(x, strategy="ring")))
    return out


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    warnings.simplefilter("ignore")
    try:
        report = {case: _run_case(rank, world, i, *case[:3], DTYPES[case[3]][0]) for i, case in enumerate(CASES)}
        report["bad calls"] = _bad_calls(rank)
        torch.save(report, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()  # every rank's report is written before any rank tears down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def reports(request) -> list[dict]:
    return rank_reports(_worker, request.param)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_matches_single_process(reports, case):
    tol = DTYPES[case[3]][1]
    for rank, report in enumerate(reports):
        result = report[case]
        assert result["metrics"], f"rank {rank}: accuracy or row counts differ"
        worst = {name: err for name, err in result["errors"].items() if not err <= tol}
        assert not worst, f"rank {rank}: relative errors above {tol}: {worst}"


def test_bad_input_on_one_rank_raises_everywhere(reports):
    for name in reports[0]["bad calls"]:
        if name == "still in step":
            continue
        for rank, report in enumerate(reports):
            raised = report["bad calls"][name]
            assert raised is not None, f"{name}: rank {rank} did not raise"
            assert "rank" in raised[1], f"{name}: rank {rank}'s message does not name the rank: {raised[1]}"
            if name.startswith("overflow"):
                assert "overflow" in raised[1] and "normalize=True" in raised[1], raised[1]
        assert len({r["bad calls"][name][0] for r in reports}) == 1, f"{name}: ranks raised different types"
    assert all(r["bad calls"]["still in step"] for r in reports)


def test_runs_in_one_process_without_init():
    """Without torch.distributed the losses are the single-process ones (world size 1)."""
    torch.manual_seed(0)
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (10,))
    for strategy in STRATEGIES:
        got = dd.supcon_loss(x, labels, strategy=strategy)
        (g,) = torch.autograd.grad(got, x)
        want = dk.supcon_loss(x, labels)
        (h,) = torch.autograd.grad(want, x)
        assert _rel(got.detach(), want.detach()) < 1e-12 and _rel(g, h) < 1e-12


def test_module_forms_learn_the_temperature():
    module = dd.InfoNCELoss(0.1, learnable_temperature=True, strategy="ring")
    x = torch.randn(6, 8, dtype=torch.float64)
    module.double()(x, x.flip(0)).backward()
    assert module.temp.log_scale.grad is not None and torch.isfinite(module.temp.log_scale.grad)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_module_forms_pass_their_options_to_the_functions(strategy):
    """In one process each distributed module equals its function with the same options (world size 1)."""
    torch.manual_seed(0)
    x, key = torch.randn(9, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    labels, key_labels = torch.randint(0, 3, (9,)), torch.randint(0, 3, (5,))
    pairs = [
        (
            dd.InfoNCELoss(0.3, symmetric=True, strategy=strategy)(x, x.flip(0)),
            dd.info_nce(x, x.flip(0), temperature=0.3, symmetric=True, strategy=strategy),
        ),
        (
            dd.SupConLoss(0.2, reduction="sum", strategy=strategy)(x, labels, key, key_labels),
            dd.supcon_loss(x, labels, key, key_labels, temperature=0.2, reduction="sum", strategy=strategy),
        ),
        (
            dd.CircleLoss(0.3, 16.0, normalize=False, strategy=strategy)(x, labels),
            dd.circle_loss(x, labels, margin=0.3, gamma=16.0, normalize=False, strategy=strategy),
        ),
    ]
    for got, want in pairs:  # a module holds log(1 / t) in float32: equal to its rounding
        assert torch.allclose(got, want, rtol=1e-6, atol=0)
    assert torch.equal(pairs[2][0], dk.circle_loss(x, labels, margin=0.3, gamma=16.0, normalize=False))
    with pytest.raises(ValueError, match="strategy must be one of"):
        dd.CircleLoss(strategy="allgather")(x, labels)


def test_nothing_counted_gives_a_zero_loss_with_a_warning():
    x = torch.randn(4, 8, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no row is counted"):
        out = dd.supcon_loss(x, torch.arange(4), strategy="ring", return_metrics=True)
    assert out.loss.item() == 0.0 and (out.rows_counted, out.rows_dropped) == (0, 4)
    out.loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reduction="none"), "per-row losses"),
        (dict(strategy="allgather"), "strategy must be one of"),
        (dict(backend="dense"), "backend must be one of"),
    ],
)
def test_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dd.info_nce(torch.randn(4, 8), **kwargs)
