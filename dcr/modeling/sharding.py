"""The decoder layers sharded over ranks with FSDP2 (`torch.distributed.fsdp.fully_shard`), for models
larger than one GPU.

Each decoder layer is its own FSDP unit: its parameters (weights, LoRA adapters) live as 1/world shards
(DTensors) on every rank, are all-gathered for the layer's forward and backward and freed after, and its
gradients are reduce-scattered into shards, so a rank holds 1/world of the trained layers' weights,
gradients and AdamW state. Trained layers keep fp32 master weights (the frozen ones stay in the weights'
dtype); with bf16 compute FSDP2's policy casts the gathered weights to bf16 and reduces in fp32. The
token embeddings, the final norm and the LM head stay replicated (one tied matrix may belong to only one
unit, and the stages call them on their own); when they are trained their gradients are all-reduced as
in plain data parallelism. Gradient caching works unchanged: the pass without gradients gathers and frees
each layer like the pass with them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from dcr.modeling.layer_states import decoder_of


def shard_layers(model: nn.Module, *, compute_dtype: torch.dtype | None, mean: bool) -> None:
    """Shard every decoder layer of ``model`` in place (each becomes an FSDP unit).

    ``compute_dtype`` (e.g. bf16) is the dtype the gathered weights are cast to; None computes in the
    stored dtype. ``mean``: gradients are averaged over ranks (each rank's loss is the global one) rather
    than summed (each rank's loss is its share)."""
    for block in decoder_of(model).layers:
        trained = [p for p in block.parameters() if p.requires_grad]
        for p in trained:  # fp32 master weights; the frozen ones (a LoRA base layer) keep their dtype
            p.data = p.data.float()
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if trained else None)
        fully_shard(block, mp_policy=policy, reshard_after_forward=True)
        if not mean:
            block.set_gradient_divide_factor(1.0)
            block.set_force_sum_reduction_for_comms(True)  # plain sums: gloo has no pre-multiplied sum


def is_sharded(p: torch.Tensor) -> bool:
    """Whether ``p`` is a parameter (or gradient) held as shards over ranks."""
    return isinstance(p, DTensor)


def any_sharded(model: nn.Module) -> bool:
    return any(is_sharded(p) for p in model.parameters())


def full_state_dict(model: nn.Module, dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """Every weight of ``model`` as an ordinary CPU tensor, gathered on rank 0 (a collective: every rank
    calls it; the other ranks get an empty dict), each cast to its dtype in ``dtypes`` (the weights' dtype
    before sharding) as it arrives: rank 0's host holds one copy in the saved dtypes, a device one gathered
    tensor at a time. Tied weights stay one tensor."""
    main = dist.get_rank() == 0
    state, copies = {}, {}
    for name, tensor in model.state_dict().items():
        if is_sharded(tensor):
            full = tensor.full_tensor()  # every rank takes part in the gather
            if main:
                state[name] = full.to("cpu", dtypes.get(name, full.dtype))  # a fresh tensor: no second copy
            del full
        elif main:  # replicated: the embeddings, the final norm, the head (tied to the embeddings or not)
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key not in copies:  # the live tensor itself when it is on the CPU in its saved dtype
                copies[key] = tensor.detach().to("cpu", dtypes.get(name, tensor.dtype))
            state[name] = copies[key]
    return state


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients so that their global norm is at most ``max_norm``; return the norm before.

    Sharded gradients contribute their local shard's squares, summed over ranks (one all-reduce, on the
    gradients' device); replicated gradients count once."""
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # [sharded, replicated]
    for g in grads:
        sharded = is_sharded(g)
        sums[0 if sharded else 1] += (g.to_local() if sharded else g).double().square().sum()
    total = sums[1] + _all_reduced(sums[0])
    norm = float(total.sqrt())
    scale = max_norm / (norm + 1e-6)  # as torch.nn.utils.clip_grad_norm_
    if scale < 1.0:
        for g in grads:
            (g.to_local() if is_sharded(g) else g).mul_(scale)
    return norm


def _all_reduced(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(out)
    return out


def trained_state_bytes(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds of the trained parameters, their gradients and the optimizer's state (local
    shards only, where sharded)."""

    def local(t: torch.Tensor | None) -> int:
        if not isinstance(t, torch.Tensor):
            return 0
        t = t.to_local() if is_sharded(t) else t
        return t.numel() * t.element_size()

    moments = (v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))
    return sum(local(p) + local(p.grad) for p in params) + sum(local(m) for m in moments if m.dim() > 0)
