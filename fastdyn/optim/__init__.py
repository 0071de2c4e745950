"""Drop-in fused optimizers: torch.optim.Optimizer subclasses whose step is a few
multi-tensor kernel launches per (device, dtype) group."""

from fastdyn.optim.adam import Adam, AdamW
from fastdyn.optim.lamb import LAMB
from fastdyn.optim.lars import LARS
from fastdyn.optim.optimizer import FusedOptimizer
from fastdyn.optim.stats import StepStats
from fastdyn.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "FusedOptimizer", "LAMB", "LARS", "SGD", "StepStats"]
