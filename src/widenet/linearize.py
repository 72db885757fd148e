"""Taylor models of torch modules around their initial parameters (Lee et al. 2019,
arXiv 1902.06720): ``linearize(model)`` is ``f(p0, x) + J(p0, x) (p - p0)``, trainable with
any torch optimizer; ``taylor_expand(model, degree)`` keeps the first ``degree`` orders."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call, jvp

from ._validate import check_int
from .errors import ParameterError

__all__ = ["linearize", "taylor_expand", "TaylorModel"]


class TaylorModel(nn.Module):
    """``f_k(p, x) = sum_{j <= k} (1/j!) d^j/ds^j f(p0 + s (p - p0), x) at s = 0``.

    Its parameters (same names as the model's, with ``.`` replaced by ``__``) start at ``p0``;
    ``p0`` and the model's buffers are frozen. Derivatives are forward-mode
    (``torch.func.jvp``), nested ``degree`` times; gradients flow to the parameters through
    them, so any optimizer trains it. The wrapped model is evaluated in the mode it had when
    expanded (call ``.train()``/``.eval()`` on this module to change it).
    """

    def __init__(self, model: nn.Module, degree: int) -> None:
        super().__init__()
        self.degree = degree
        self._model = copy.deepcopy(model)
        for p in self._model.parameters():
            p.requires_grad_(False)
        self._names = [n for n, _ in model.named_parameters()]
        self.params = nn.ParameterDict([(n.replace(".", "__"), nn.Parameter(p.detach().clone()))
                                        for n, p in model.named_parameters()])
        for n, p in model.named_parameters():
            self.register_buffer("p0__" + n.replace(".", "__"), p.detach().clone())

    def initial_parameters(self) -> dict:
        return {n: getattr(self, "p0__" + n.replace(".", "__")) for n in self._names}

    def forward(self, *args, **kwargs):
        p0 = self.initial_parameters()
        delta = {n: self.params[n.replace(".", "__")] - p0[n] for n in self._names}
        buffers = dict(self._model.named_buffers())

        def along(s):  # the model along the segment p0 + s (p - p0)
            return functional_call(self._model, ({n: p0[n] + s * delta[n] for n in self._names}, buffers),
                                   args, kwargs)

        s0 = torch.zeros((), dtype=next(iter(p0.values())).dtype, device=next(iter(p0.values())).device)
        one = torch.ones_like(s0)
        fns = [along]
        for _ in range(self.degree):
            fns.append(lambda s, f=fns[-1]: jvp(f, (s,), (one,))[1])
        out = fns[0](s0)
        for j in range(1, self.degree + 1):
            out = out + fns[j](s0) / math.factorial(j)
        return out


def taylor_expand(model: nn.Module, degree: int) -> TaylorModel:
    """The ``degree``-th order Taylor expansion of ``model`` in its parameters around their
    current values (``degree=1``: ``linearize``; evaluating order ``k`` costs about
    ``2^k`` forward passes)."""
    if not isinstance(model, nn.Module):
        raise ParameterError(f"taylor_expand: model must be a torch.nn.Module (got {type(model).__name__})")
    degree = check_int("taylor_expand", "degree", degree, minimum=1)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise ParameterError("taylor_expand: the model has uninitialized (lazy) parameters; run it on one input first")
    return TaylorModel(model, degree)


def linearize(model: nn.Module) -> TaylorModel:
    """The first-order Taylor model ``f(p0, x) + J(p0, x) (p - p0)`` of ``model`` around its
    current parameters ``p0``: a module with the same parameters, trainable with any torch
    optimizer. Wide networks trained by gradient descent stay close to it (Lee et al. 2019)."""
    return taylor_expand(model, 1)
