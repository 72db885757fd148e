"""A model as a function of its parameters: what empirical kernels and the theory of finite
networks differentiate."""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, Union

import torch
from torch import nn
from torch.func import functional_call, vjp

from ..errors import ParameterError, ShapeError

__all__ = ["ParameterSelector", "select_parameters", "eval_mode", "ModelFunction", "pushforward"]

ParameterSelector = Union[None, Callable[[str, torch.Tensor], bool], Iterable[str]]


def select_parameters(model: nn.Module, params: ParameterSelector = None, *,
                      owner: str = "empirical.select_parameters") -> Dict[str, torch.Tensor]:
    """The parameters a Jacobian is taken over, detached: the trainable ones, filtered by
    ``params`` (a predicate ``(name, tensor) -> bool``, or names and module prefixes such as
    ``"fc2."``). ``owner`` names the caller in error messages.

    Example:

        >>> mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> list(wn.empirical.select_parameters(mlp, ["2"]))
        ['2.weight', '2.bias']
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if params is None:
        chosen = named
    elif callable(params):
        chosen = {n: p for n, p in named.items() if params(n, p)}
    else:
        if isinstance(params, str):
            params = [params]
        wanted = list(params)
        chosen = {n: p for n, p in named.items() if any(n == w or n.startswith(w.rstrip(".") + ".") for w in wanted)}
        unknown = [w for w in wanted if not any(n == w or n.startswith(w.rstrip(".") + ".") for n in named)]
        if unknown:
            raise ParameterError(
                f"{owner}: params names no trainable parameter for {unknown} (the model has {list(named)[:8]}"
                f"{' ...' if len(named) > 8 else ''})"
            )
    if not chosen:
        raise ParameterError(f"{owner}: no trainable parameters selected (params={params!r})")
    return {n: p.detach() for n, p in chosen.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode within the block (dropout off, BatchNorm on its running
    statistics), its previous mode restored after: empirical kernels are those of the
    deterministic network."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class ModelFunction:
    """``f(params, x) -> (B, O)``: the model's outputs, flattened per input, as a function of
    the chosen parameters (a dict like ``select_parameters`` returns), the other
    parameters and buffers held fixed; ``torch.func`` transforms apply to it.

    Example:

        >>> mlp = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2)).double()
        >>> params = wn.empirical.select_parameters(mlp)
        >>> f = wn.empirical.ModelFunction(mlp, params)
        >>> jac = torch.func.jacrev(f)(params, x)   # the Jacobian, per parameter
    """

    def __init__(self, model: nn.Module, chosen: Dict[str, torch.Tensor], owner: str = "empirical.ModelFunction"):
        self.owner, self.model = owner, model
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
        self.fixed.update(dict(model.named_buffers()))

    def __call__(self, params, x):
        out = functional_call(self.model, {**self.fixed, **params}, (x,))
        if not isinstance(out, torch.Tensor):
            raise ShapeError(
                f"{self.owner}: the model must return one tensor of outputs (got {type(out).__name__}); "
                f"wrap it so that forward returns the tensor to differentiate"
            )
        if out.ndim == 0 or out.shape[0] != x.shape[0]:
            raise ShapeError(
                f"{self.owner}: the model's output must have the batch as its first axis: input batch "
                f"{x.shape[0]}, output shape {tuple(out.shape)}"
            )
        return out.reshape(out.shape[0], -1)


def pushforward(fn: Callable, params: Dict[str, torch.Tensor], x: torch.Tensor) -> Callable:
    """``t -> (J(x) t,)``, the Jacobian-vector product of ``fn(params, x)`` in ``params``,
    without forward-mode rules: the vector-Jacobian product of the linear map
    ``u -> J(x)^T u`` (double backward), for models with ops that lack forward-mode AD.
    Built once, applied to any tangents (dicts shaped like ``params``)."""
    out, pullback = vjp(lambda p: fn(p, x), params)
    return vjp(lambda u: pullback(u)[0], torch.zeros_like(out))[1]
