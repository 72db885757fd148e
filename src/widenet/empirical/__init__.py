"""Finite width: the empirical NNGP and NTK of any ``torch.nn.Module``.

``ntk(model, x1, x2)`` is ``J(x1) J(x2)^T`` over the model's parameters, with
``J = d model(x) / d params`` (Jacot et al. 2018), computed with ``torch.func`` by Jacobian
contraction or by NTK-vector products (Novak et al. 2022, arXiv 2206.08720), in chunks of
inputs within a memory budget. ``nngp(model, x1, x2)`` is ``f(x1) f(x2)^T``.
"""

from ._model import ModelFunction, ParameterSelector, eval_mode, pushforward, select_parameters
from ._monte_carlo import MonteCarloKernel, monte_carlo
from ._ntk import kernel, nngp, ntk

__all__ = ["ntk", "nngp", "kernel", "monte_carlo", "MonteCarloKernel", "select_parameters",
           "eval_mode", "ModelFunction", "pushforward", "ParameterSelector"]
