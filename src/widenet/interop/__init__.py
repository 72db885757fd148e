"""Interoperation with the rest of the PyTorch world: ``from_torch`` (a user's
``nn.Module`` as a widenet network, by ``torch.fx``) and ``to_torch``."""

from .from_torch import from_torch, to_torch

__all__ = ["from_torch", "to_torch"]
