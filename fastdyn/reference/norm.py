import torch

from fastdyn.ops.checks import check_float_list, check_scalar_tensor


def tensor_norms(tensors, ord: float):
    """float64 norm of each tensor and of all of them (as one vector)."""
    # An empty tensor adds nothing to the total: its norm is 0 for ord >= 0 (torch refuses
    # the inf norm of one) and inf for ord < 0 (sum |x|^p over nothing is 0, and 0^(1/p) is
    # inf; the min of nothing is inf), which a total of negative order ignores, as torch's
    # clip of the other gradients does. (A 0 there made every such total 0.)
    empty = float("inf") if ord < 0 else 0.0
    per = [torch.linalg.vector_norm(t.detach().double(), ord) if t.numel()
           else torch.full((), empty, dtype=torch.float64, device=t.device) for t in tensors]
    if not per:
        return torch.zeros((), dtype=torch.float64), per
    return torch.linalg.vector_norm(torch.stack([p.to(per[0].device) for p in per]), ord), per


def multi_tensor_norm(tensors, ord: float = 2.0, per_tensor: bool = False, inv_scale=None):
    """Any vector-norm order (the kernels take 2 and inf; fastdyn.ops sends others here);
    with inv_scale, of the tensors times it."""
    device = check_float_list("tensors", tensors)
    if inv_scale is not None:
        device = device or inv_scale.device
        check_scalar_tensor("inv_scale", inv_scale, device)
        # the tensors times it, in float64 (no square leaves its range)
        factor = inv_scale.detach().reshape(()).double()
        tensors = [t.detach().double() * factor.to(t.device) for t in tensors]
    total, per = tensor_norms(tensors, ord)
    per_out = torch.stack(per).float() if (per_tensor and per) else torch.zeros(0, device=device)
    if not per_tensor:
        per_out = torch.zeros(0, device=device)
    return total.float(), per_out
