from fastdyn.ops.checks import sgd_args
from fastdyn.reference._update import begin_step, param_value, store, write_stats


def momentum_step(d, buf, momentum, dampening, nesterov, is_first_step):
    """torch.optim.SGD's momentum on direction d; returns (direction, new buffer). buf None:
    no momentum (the op got no buffers)."""
    if buf is None:
        return d, None
    momentum = float(momentum)
    buf = d.clone() if is_first_step else buf.double() * momentum + (1 - dampening) * d
    return (d + momentum * buf if nesterov else buf), buf


def sgd_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale=None, found_inf=None, stats=None):
    sgd_args(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
             weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf, stats)
    if not params:
        return
    skip, lr, inv = begin_step([], lr, grad_scale, found_inf)
    if skip:
        return
    weight_decay = float(weight_decay)
    for i in range(len(params)):
        p = param_value(params, master_params, i)
        g = grads[i].double() * inv
        d = -g if maximize else g
        if weight_decay != 0:
            d = d + weight_decay * p
        d, buf = momentum_step(d, momentum_buffers[i] if momentum_buffers else None, momentum,
                               dampening, nesterov, is_first_step)
        if buf is not None:
            momentum_buffers[i].copy_(buf)
        new = p - lr * d
        held = store(params, master_params, i, new)
        write_stats(stats, i, g, p, held)
