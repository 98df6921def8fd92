"""Sharded parameters (FSDP2, DeepSpeed ZeRO-3) as a sorth layer sees them outside the forward.

Inside the forward both engines hand a layer whole tensors: FSDP2 (``fully_shard``) all-gathers
the parameters of the module it wraps and registers the unsharded tensors for the duration of
the forward; ZeRO-3 gathers a partitioned parameter when its module runs, or when it is read
(DeepSpeed's parameter dictionaries fetch on access). Outside the forward they are shards:

* FSDP2: a ``torch.distributed.tensor.DTensor`` whose local tensor holds this rank's rows
  (dim 0, padded to a multiple of the world size); ``.shape`` is the global shape.
* ZeRO-3: an empty tensor with ``ds_shape`` (the global shape) and ``ds_tensor`` (this
  rank's partition); reading it through its module gathers it for a while.

Note [sharded merge]: merging writes the base weight outside the forward. On an FSDP2 shard the
write would mix a whole-weight formula with one rank's rows, and on a ZeRO-3 partition there is
no data at all (DeepSpeed may gather it on access, but a weight written then is partitioned
again from whatever each rank holds), so :func:`check_unsharded` refuses both in one line that
names what works: save the adapter (gathered, :mod:`sorth.integrations.distributed`) and merge
it on one process (``sorth merge``).
"""

from __future__ import annotations

import torch

from sorth.errors import SOrthValueError

__all__ = ["ShardedWeightError", "check_unsharded", "global_shape", "sharding_of"]


class ShardedWeightError(SOrthValueError):
    """An operation that needs the whole base weight met a shard of it (Note [sharded merge])."""


def _is_dtensor(t: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def sharding_of(t: torch.Tensor) -> str | None:
    """``"fsdp"`` for an FSDP2 / DTensor shard, ``"zero3"`` for a ZeRO-3 partitioned parameter
    (gathered or not at this moment), ``None`` for a whole tensor."""
    if _is_dtensor(t):
        return "fsdp"
    if hasattr(t, "ds_id") and hasattr(t, "ds_tensor"):  # ZeRO-3 (ZeRO-1/2 do not partition)
        return "zero3"
    return None


def global_shape(t: torch.Tensor) -> torch.Size:
    """The whole tensor's shape: ``ds_shape`` for a ZeRO-3 parameter, else ``t.shape``
    (a DTensor's ``.shape`` is already global)."""
    return torch.Size(getattr(t, "ds_shape", t.shape))


def check_unsharded(weight: torch.Tensor, action: str) -> None:
    """Raise :class:`ShardedWeightError` if ``weight`` is a shard (see Note [sharded merge]).

    Args:
        weight: the base layer's weight parameter (not ``.data``).
        action: what was attempted, e.g. ``"merge the adapter"``.
    """
    kind = sharding_of(weight)
    if kind == "fsdp":
        rows = weight.to_local().shape[0] if weight.dim() else 0
        raise ShardedWeightError(
            f"cannot {action}: the base weight {tuple(weight.shape)} is an FSDP2 shard "
            f"(DTensor, {rows} rows on this rank); save the adapter with "
            "sorth.integrations.distributed.save_sharded_adapter and merge it on one process "
            "(`sorth merge`), or merge before fully_shard."
        )
    if kind == "zero3":
        raise ShardedWeightError(
            f"cannot {action}: the base weight {tuple(global_shape(weight))} is partitioned by "
            "DeepSpeed ZeRO-3; save the adapter with "
            "sorth.integrations.distributed.save_sharded_adapter and merge it on one process "
            "(`sorth merge`)."
        )
