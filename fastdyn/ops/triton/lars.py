"""Triton LARS (mirrors csrc/cuda/lars.cu): per-tensor norms, trust ratios, momentum update."""


from fastdyn.ops.triton._multi_tensor import as_float32
from fastdyn.ops.triton.norm import per_tensor_partials, scaled_norms
from fastdyn.ops.triton.sgd import momentum_update
from fastdyn.ops.trust_ratio import adapting, lars_trust_ratios, where_adapting


def lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
          nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step, grad_scale=None,
          found_inf=None, stats=None, trust_ratios=None):
    if not params:
        return
    # whether to adapt (weight_decay != 0 or always_adapt) is decided on the device, weight_decay
    # being a tensor: the ratios are 1 without adaptation (as csrc/cuda/lars.cu)
    ratios = None
    if trust_ratios is not None:  # the caller's (norms all-reduced over shards)
        ratios = trust_ratios.float().contiguous()
    else:
        # ||g|| of the scaled grads squared in float64 and unscaled there, as the native kernels
        # take it: a float32 square of a gradient scaled by 2^76 is inf (the ratio 0), the
        # unscaled squares of tiny gradients (1e-24) are 0 (the ratio 1)
        inv = None if grad_scale is None else grad_scale.reshape(()).double().reciprocal()
        grad_norms = scaled_norms(grads, False, inv)[1]
        p2 = per_tensor_partials(master_params if master_params else params, is_max=False)
        ratios = lars_trust_ratios(p2.sqrt(), grad_norms, trust_coeff, weight_decay, eps,
                                   as_float32(lr), trust_clip)
    ratios = where_adapting(ratios, adapting(weight_decay.reshape(()), always_adapt))
    momentum_update(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
                    weight_decay, nesterov, False, is_first_step, grad_scale, found_inf, stats,
                    lars=True, ratios=ratios)
