"""`nn.Module` forms of the distributed losses: the single-process modules with a strategy and a group.
A learnable temperature is a parameter of the module; register the module inside the DDP-wrapped model
(or average its gradient over ranks) so that its gradient follows the package's convention."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from .. import nn
from . import functional


class _Distributed:
    """Adds ``strategy`` (gather or ring) and ``group`` to a single-process loss module's options."""

    def __init__(self, *args: Any, strategy: str = "gather", group: dist.ProcessGroup | None = None, **kwargs: Any):
        if not kwargs.get("check_inputs", True):
            raise ValueError(
                "check_inputs=False is for the single-process losses: the distributed ones agree on their inputs "
                "across ranks, which reads values on every call"
            )
        super().__init__(*args, **kwargs)
        self.strategy, self.group = strategy, group

    def _options(self) -> dict[str, Any]:
        options = super()._options() | {"strategy": self.strategy, "group": self.group}
        options.pop("check_inputs")
        return options


class InfoNCELoss(_Distributed, nn.InfoNCELoss):
    """`distributed.info_nce` as a module; see `dcr_kernels.nn.InfoNCELoss` for the other arguments."""

    _functional = staticmethod(functional.info_nce)


class SupConLoss(_Distributed, nn.SupConLoss):
    """`distributed.supcon_loss` as a module; see `dcr_kernels.nn.SupConLoss` for the other arguments."""

    _functional = staticmethod(functional.supcon_loss)


class CircleLoss(_Distributed, nn.CircleLoss):
    """`distributed.circle_loss` as a module; see `dcr_kernels.nn.CircleLoss` for the other arguments."""

    _functional = staticmethod(functional.circle_loss)
