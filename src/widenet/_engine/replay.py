"""Covariance replay: each input's own covariances are computed once per kernel call.

An input's own covariances (its kernel with itself, after every layer) depend on nothing but
that input, and every tile of a call applies the same network. So the first tile that meets a
block of inputs records its covariances step by step, and every later tile with that block
replays them instead of computing them again. A *step* is one call of
``widenet._engine.Tile.set_covs``; rules take their steps in a fixed order, so the
``k``-th step of every tile is the same covariance update.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import scratch

__all__ = ["CovTape", "Tapes"]


class CovTape:
    """One block of inputs' own covariances: those of the input layer and after each step.

    Replayed values are the recorded tensors themselves; rules never write into a covariance
    they are given (the layer contract), so they stay what was recorded."""

    __slots__ = ("input", "steps")

    def __init__(self) -> None:
        self.input: Optional[torch.Tensor] = None
        self.steps: list[torch.Tensor] = []

    def nbytes(self) -> int:
        tensors = ([] if self.input is None else [self.input]) + self.steps
        return sum(t.numel() * t.element_size() for t in tensors)


class Tapes:
    """The tapes of a tile's row and column blocks (one tape when the tile is a block against
    itself) and the index of the next step; shared by a tile and its FanOut copies, whose
    steps run in a fixed order."""

    __slots__ = ("side1", "side2", "pos")

    def __init__(self, side1: CovTape, side2: CovTape) -> None:
        self.side1, self.side2, self.pos = side1, side2, 0

    def take(self, tape: CovTape, index: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Step ``index`` of ``tape``: replayed if recorded, else ``make()`` recorded."""
        if index < len(tape.steps):
            return tape.steps[index]
        # Steps are taken in order, so this is the next one (the driver checks the count).
        value = make()
        scratch.release(value)  # kept across tiles: no longer the pool's to hand out
        tape.steps.append(value)
        return value

    def complete(self) -> bool:
        """Whether the tile took exactly the steps its blocks recorded."""
        return self.pos == len(self.side1.steps) == len(self.side2.steps)
