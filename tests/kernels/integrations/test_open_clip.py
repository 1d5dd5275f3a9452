"""The OpenCLIP drop-ins against OpenCLIP's own `ClipLoss` and `SigLipLoss` (its loss module, loaded from the
installed package's file: the package itself imports torchvision): loss, feature gradients and the learnable
logit scale's (and SigLIP's bias') gradient, in one process and in 2 gloo processes for every
(local_loss, gather_with_grad) and every SigLIP exchange pattern."""

from __future__ import annotations

import importlib.util
import itertools
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from spawn_ranks import rank_reports

from dcr_kernels.integrations import open_clip as ours


def _their_loss_module():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-clip-torch is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "loss.py")
    module_spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _features(b: int, d: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(b, d, generator=gen, dtype=dtype), dim=1)
    text = F.normalize(image + 0.7 * torch.randn(b, d, generator=gen, dtype=dtype), dim=1)
    return image, text


def _step(loss_fn, image, text, scale, bias=None):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    logit_scale = torch.tensor(scale, dtype=image.dtype, requires_grad=True)
    value = loss_fn(image, text, logit_scale, bias)
    value.backward()
    return value.detach(), image.grad, text.grad, logit_scale.grad


@pytest.mark.parametrize("b,d", [(1, 8), (37, 24), (130, 65)])
def test_single_process_matches_open_clip(b, d):
    theirs = _their_loss_module().ClipLoss()
    image, text = _features(b, d, seed=b)
    for scale in (1 / 0.07, 100.0):
        got, want = _step(ours.ClipLoss(), image, text, scale), _step(theirs, image, text, scale)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_output_dict_and_bias():
    image, text = _features(9, 6, seed=3)
    scale = torch.tensor(10.0, dtype=torch.float64)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    out = ours.ClipLoss()(image, text, scale, bias, output_dict=True)
    want = _their_loss_module().ClipLoss()(image, text, scale, bias.detach(), output_dict=True)
    torch.testing.assert_close(out["contrastive_loss"], want["contrastive_loss"])
    out["contrastive_loss"].backward()
    assert bias.grad.item() == 0.0
    with pytest.raises(ValueError, match="horovod"):
        ours.ClipLoss(use_horovod=True)


def _siglip_step(loss_fn, image, text, scale, bias):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    logit_scale = torch.tensor(scale, dtype=image.dtype, requires_grad=True)
    logit_bias = torch.tensor(bias, dtype=image.dtype, requires_grad=True)
    value = loss_fn(image, text, logit_scale, logit_bias)
    value.backward()
    return value.detach(), image.grad, text.grad, logit_scale.grad, logit_bias.grad


@pytest.mark.parametrize("b,d", [(1, 8), (37, 24), (130, 65)])
def test_siglip_single_process_matches_open_clip(b, d):
    theirs = _their_loss_module().SigLipLoss()
    image, text = _features(b, d, seed=b + 1)
    for scale, bias in ((10.0, -10.0), (1.0, 0.5)):
        got = _siglip_step(ours.SigLipLoss(), image, text, scale, bias)
        want = _siglip_step(theirs, image, text, scale, bias)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="dist_impl"):
        ours.SigLipLoss(dist_impl="ring")


SETTINGS = list(itertools.product([False, True], [False, True]))  # (local_loss, gather_with_grad)
SIGLIP_IMPLS = ("bidir", "shift", "reduce", "gather")


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        theirs = _their_loss_module()
        image, text = _features(6 * world, 10, seed=11)
        local = slice(6 * rank, 6 * (rank + 1))
        report = {}
        for local_loss, with_grad in SETTINGS:
            kw = dict(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)
            got = _step(ours.ClipLoss(**kw), image[local], text[local], 1 / 0.07)
            want = _step(theirs.ClipLoss(**kw), image[local], text[local], 1 / 0.07)
            report[(local_loss, with_grad)] = (got, want)
        for impl in SIGLIP_IMPLS:
            kw = dict(rank=rank, world_size=world, dist_impl=impl)
            got = _siglip_step(ours.SigLipLoss(**kw), image[local], text[local], 10.0, -10.0)
            want = _siglip_step(theirs.SigLipLoss(**kw), image[local], text[local], 10.0, -10.0)
            report[impl] = (got, want)
        torch.save(report, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()  # both ranks' collectives are done before the group is torn down
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_open_clip_for_every_gather_setting_and_exchange():
    reports = rank_reports(_worker, 2)
    for report in reports:
        for setting, (got, want) in report.items():
            for x, y in zip(got, want, strict=True):
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12, msg=lambda m, s=setting: f"{s}: {m}")
