"""DTensor parameters (FSDP2's `fully_shard`, tensor parallelism): the kernels run on each
rank's local shard, and every sum that spans a whole tensor (a norm, a trust ratio's
norms, the global gradient norm, the inf check) is all-reduced over the mesh dimensions
the tensor is sharded on. Plain tensors, including DDP's replicas, pass through untouched.

The fastdyn ops have no DTensor sharding rules on purpose: a norm of a shard is not the
norm of the tensor, so dispatching an op shard-wise would be silently wrong for LAMB, LARS
and clipping.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # a torch built without distributed
    DTensor = Replicate = None


class ShardSpec(NamedTuple):
    """Where the rest of a sharded tensor lives: its mesh and the mesh dimensions it is
    split along (replicated dimensions hold copies, so they are not summed over)."""

    mesh: object
    dims: tuple

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """t reduced in place ("sum" or "max") over every rank that holds another shard of
        the tensor."""
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        for d in self.dims:
            dist.all_reduce(t, op=reduce_op, group=self.mesh.get_group(d))
        return t


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t):
    """The rank's local tensor of a DTensor (same storage: writing it writes the DTensor);
    any other tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def shard_spec(t, name: str) -> Optional[ShardSpec]:
    """The ShardSpec of a DTensor sharded along some mesh dimension; None for plain and
    fully replicated tensors. A Partial placement (pending sums) is refused: its local
    values are not the tensor's."""
    if not is_dtensor(t):
        return None
    dims = []
    for i, placement in enumerate(t.placements):
        if placement.is_partial():
            raise ValueError(f"{name} is a DTensor with a Partial placement {tuple(t.placements)}; "
                             "redistribute it to Shard or Replicate first")
        # every placement but Replicate splits the tensor: FSDP2 over tensor parallelism
        # places _StridedShard, whose is_shard() is False (torch 2.14), and its dp shards
        # had been left out of every norm (a clip norm of 1.03 for 1.17)
        if not placement.is_replicate() and t.device_mesh.size(i) > 1:  # one rank: all of it
            dims.append(i)
    return ShardSpec(t.device_mesh, tuple(dims)) if dims else None


def in_param_placements(grad, param):
    """`param`'s DTensor gradient in the param's placements: one of pending sums (Partial:
    sequence parallelism leaves a LayerNorm weight's so) or placed unlike its param is
    redistributed, as torch's DTensor ops do before they combine them. (Its local values
    had been stepped as they were: each rank its own partial sum.)"""
    if is_dtensor(grad) and is_dtensor(param) and tuple(grad.placements) != tuple(param.placements):
        return grad.redistribute(param.device_mesh, param.placements)
    return grad


def without_partial(t):
    """A DTensor with its pending sums (Partial placements) done: Replicate there."""
    if is_dtensor(t) and any(p.is_partial() for p in t.placements):
        return t.redistribute(t.device_mesh, [Replicate() if p.is_partial() else p
                                              for p in t.placements])
    return t


def sharded_norms(norms: torch.Tensor, spec: Optional[ShardSpec]) -> torch.Tensor:
    """L2 norms of local shards -> L2 norms of the whole tensors: the squares are summed
    over the shards. NaN and inf stay NaN and inf."""
    if spec is None:
        return norms
    return spec.all_reduce_(norms.square().contiguous()).sqrt_()


def as_replicated(value: torch.Tensor, like) -> torch.Tensor:
    """`value`, the same on every rank, as a replicated DTensor on `like`'s mesh, the way
    torch's clip_grad_norm_ returns the norm of DTensor gradients."""
    mesh = like.device_mesh
    return DTensor.from_local(value, mesh, [Replicate()] * mesh.ndim, run_check=False)
