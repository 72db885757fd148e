"""The layer contract: what every widenet layer is, and what it promises the engine.

A ``Layer`` is one object with two faces: an exact infinite-width kernel rule, and a
finite-width twin, the ``torch.nn.Module`` whose random initialization has that limit. A
layer is one file (``layers/conv.py`` holds ``widenet.Conv``, its rule and its twin),
exported by one line of ``layers/__init__.py``; ``ARCHITECTURE.md`` adds one as a worked
example. A subclass:

* **declares its hyperparameters** as the fields of a frozen dataclass and validates them in
  ``__post_init__`` with ``widenet._validate`` (messages name the layer, the parameter,
  the rule and the value). Float hyperparameters accept 0-d tensors
  (``check_float(..., tensor=True)``): kernels are differentiable in them.
* **writes its kernel rule**, ``Layer._rule``. It receives the kernel state of one tile of
  input pairs, a ``widenet._engine.Tile`` (or a tuple of them between ``FanOut`` and a
  ``FanIn``), and returns the state after the layer. The rule

  - may update the tile tensors ``nngp`` and ``ntk`` in place or replace them; ``nngp is
    None`` asks for the own covariances only, ``ntk is None`` for no NTK;
  - changes the own covariances ``cov1``/``cov2`` only through ``tile.set_covs(fn)``, with
    ``fn`` returning a new tensor: each covariance step is computed once per block of inputs
    and replayed by every later tile (covariance replay), so ``fn`` must depend on nothing
    but the covariance it is given and the layer's hyperparameters;
  - updates ``spatial``, ``width`` and ``is_gaussian`` when the layer changes them, and
    raises ``widenet.errors.LayerOrderError`` or ``widenet.errors.ShapeError``
    (naming the layer) for inputs it cannot take;
  - takes temporaries from ``widenet._engine.scratch`` and never writes through ``out=``
    itself (the pool knows when that is allowed: never while derivatives are carried);
  - is reproducible: matrix products through ``exact.matmul``, the elementwise functions
    that torch evaluates differently in its scalar tails (``atan2``, ``exp``) through
    ``exact.call``/``exact.apply_``, reductions through ``exact.sum``/``exact.mean``, and
    the value of a pair ``(x, x')`` computed from the same numbers in the same order as that
    of ``(x', x)`` (see ``widenet._engine.exact``);
  - may cache only pure functions of shapes and hyperparameters (``functools.lru_cache``),
    never tensors of a call.

  In-place updates stay allowed when autograd records: the engine keeps a copy of every
  tensor that autograd saves (``widenet._engine.autodiff``), so rules are differentiable in
  reverse and forward mode as written.
* **declares its layout needs**: ``Layer._needs_full`` is True when the rule mixes
  positions (pooling, attention), so that its input holds every pair of positions.
* **builds its twin**, ``Layer._twin``, from the shape of its input (features and
  spatial dimensions, when known) and a ``Build`` (seeds, dtype, device, weight
  initialization); it returns the module and the shape of its output.

``tests/layers/contract.py`` checks all of it for every layer: kernel against Monte Carlo of
its twin, symmetry, batch invariance, float32 against float64, tiles against one call,
reproducible mode, gradients by ``torch.autograd.gradcheck``, the twin's ``repr`` and the
errors for bad hyperparameters.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .. import _engine
from .._engine import Flow, Tile
from .._validate import as_inputs, check_choice, check_int
from ..errors import LayerOrderError, ParameterError, ShapeError
from ..kernel import Kernel

__all__ = ["Layer", "Shape", "Build", "Spec", "derive_seed", "INITS"]

INITS = ("gaussian", "orthogonal", "delta_orthogonal")


@dataclass(frozen=True)
class Shape:
    """What a twin knows of the tensor it receives: ``features`` (axis 1: features or
    channels) and ``ndim`` (spatial dimensions), each None when not known before the first
    forward call (the twin then builds lazily)."""

    features: Optional[int] = None
    ndim: Optional[int] = None

    def with_features(self, features: Optional[int]) -> "Shape":
        return dataclasses.replace(self, features=features)


Spec = Union[Shape, tuple]  # one branch, or a tuple of branches


class InputCheck:
    """A twin's forward pre-hook: inputs must be ``(N, *input_shape)``, the shape the twin was
    built for (a class, not a closure, so that the module still pickles)."""

    def __init__(self, owner: str, shape: tuple) -> None:
        self.owner, self.shape = owner, tuple(int(n) for n in shape)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and (x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape):
            expected = ", ".join(str(n) for n in self.shape)
            raise ShapeError(
                f"{self.owner.replace('.module', '')} twin: expected inputs of shape (N, {expected}), the "
                f"input_shape it was built for (got {tuple(x.shape)}); build another twin with "
                f".module(input_shape) for other inputs"
            )


@dataclass(frozen=True)
class Build:
    """How a network's twin is built: its parametrized modules draw their seeds from
    ``seeds`` in network order; ``dtype``, ``device`` and ``init`` (the weight
    initialization, one of :data:`INITS`) apply to all of them."""

    seeds: Iterator[int]
    dtype: Optional[torch.dtype] = None
    device: Union[str, torch.device, None] = None
    init: str = "gaussian"

    def seed(self) -> int:
        return next(self.seeds)


def derive_seed(base_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for the ``index``-th parametrized module of a network."""
    state = np.random.SeedSequence([base_seed & (2**64 - 1), index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


class Layer:
    """Base class of every widenet layer (see the module docstring for the contract)."""

    # A layer that reads a graph for every input (Aggregate) sets this and gives
    # ``_prepare_pattern(owner, name, pattern, x) -> dict``: the validated side input that its
    # rule finds, sliced to the tile's rows and columns, in ``Tile.side1``/``side2``.
    _reads_pattern = False

    # ---- the contract -----------------------------------------------------------------------
    def _rule(self, flow: Flow) -> Flow:
        """The kernel rule on one tile of input pairs (see the module docstring)."""
        raise NotImplementedError  # pragma: no cover - every concrete layer overrides it

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        """The finite-width module for an input of shape ``spec``, and its output's shape."""
        raise NotImplementedError  # pragma: no cover

    def _needs_full(self) -> bool:
        """True when the rule mixes positions (pooling, attention): its input kernel must hold
        every pair of positions, not only the spatial diagonal."""
        return False

    # ---- helpers for subclasses -------------------------------------------------------------
    @property
    def _name(self) -> str:
        return type(self).__name__

    def _single(self, flow: Flow) -> Tile:
        if isinstance(flow, tuple):
            raise LayerOrderError(
                f"{self._name}: expected one branch but received {len(flow)}; merge branches "
                f"with FanInSum, FanInProd or FanInConcat first"
            )
        return flow

    def _single_spec(self, spec: Spec) -> Shape:
        if isinstance(spec, tuple):
            raise LayerOrderError(
                f"{self._name}: expected one branch but received {len(spec)}; merge branches "
                f"with FanInSum, FanInProd or FanInConcat first"
            )
        return spec

    def _parameters(self) -> list[torch.Tensor]:
        """The tensor-valued hyperparameters of this layer and the layers inside it."""
        return [t for _, t in _hyperparameters(self)]

    # ---- public API ---------------------------------------------------------------------------
    def kernel(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None,
               memory: Union[int, str, None] = None, layout: str = "auto", mask1: Any = None,
               mask2: Any = None, reproducible: bool = False, pattern1: Any = None,
               pattern2: Any = None) -> Kernel:
        """NNGP and NTK between ``x1`` and ``x2``.

        Inputs are ``(N, features)`` for fully connected networks and ``(N, C, *S)`` (PyTorch's
        layout: channels, then 1 to 3 spatial axes) for convolutional ones; sequences are
        ``(N, C, L)``. ``x2=None`` means ``x2 = x1``; then only pairs (i, j >= i) are computed
        and mirrored, so the result is exactly symmetric. dtype and device follow the inputs
        (numpy arrays are converted; float64 is recommended for accuracy).

        Args:
            block_size: inputs per side of a tile of pairs (default: chosen from the cache
                size and ``memory``). Any value >= 1; nothing needs to divide anything.
            memory: bound on the working memory beyond inputs and outputs, in bytes or as a
                string like ``"2GB"`` (default: a quarter of the memory available now). Tiles
                are sized so that their temporaries stay within it, whatever N.
            layout: "auto" (default), "diagonal" or "full". For spatial inputs, "diagonal"
                computes only position s of x1 against the same position of x2 (O(|S|) per
                pair), "full" every pair of positions (O(|S|^2)). "auto" takes "full" only when
                a pooling or attention layer needs it.
            mask1, mask2: padding masks for variable-length sequences (or images with padded
                regions): boolean ``(N, *S)`` tensors, **True at padded positions** (as torch's
                ``key_padding_mask`` and Neural Tangents' masks). Padded positions are left
                out of every sum, mean and softmax over positions, so a padded input gets
                exactly the kernel of the unpadded one; entries involving a padded position
                are zero in the result. ``mask2`` must be None when ``x2`` is None; a missing
                mask means no padding. Masks pass through layers that keep positions in place
                (Dense, nonlinearities, stride-1 "same" Conv, LayerNorm, Dropout,
                SelfAttention) and end at global pooling; strided, windowed or flattening
                layers raise.
            reproducible: compute every entry so that its bits depend only on the two
                inputs it pairs, never on which other inputs share its tile, on
                ``block_size``, ``memory`` or the number of threads: matrix products are
                computed exactly and then rounded, elementwise functions never take their
                scalar paths, sums are never split across threads (see
                ``widenet._engine.exact``). So a kernel computed in pieces
                (``widenet.blocked.compute`` with any tile size, a Dask cluster) equals
                the kernel computed in one call bit for bit. It costs time (the README gives
                the measured factors); results agree with the default mode to a few units in
                the last place. Compiled rules (``widenet.set_compile``) are not used.
                CPU inputs only, and not differentiable (the exact products split their
                operands with ``round``).
            pattern1, pattern2: the graphs of ``x1``'s and ``x2``'s inputs, for networks with
                an ``Aggregate`` layer (see ``widenet.Aggregate`` for the dense and sparse
                formats); ``pattern2`` must be None when ``x2`` is None.

        Returns:
            a ``Kernel``; ``nngp`` and ``ntk`` have shape ``(N1, N2)`` for outputs
            without spatial axes (see ``Kernel`` for spatial outputs).

        Kernels are differentiable in reverse and forward mode with respect to the inputs and
        to every float hyperparameter passed as a 0-d tensor (``W_std``, ``b_std``, activation
        parameters, attention scales): ``k.ntk.sum().backward()`` after
        ``x2.requires_grad_()``, or ``torch.func.jvp``. A call that autograd records keeps
        what the backward pass needs of every tile, so its memory grows with the size of the
        kernel times the depth, beyond ``memory``.

        Example:

            >>> net = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1))
            >>> net.kernel(torch.randn(20, 10), torch.randn(30, 10)).ntk.shape
            torch.Size([20, 30])
        """
        return self._compute(x1, x2, True, block_size=block_size, memory=memory, layout=layout,
                             mask1=mask1, mask2=mask2, reproducible=reproducible,
                             pattern1=pattern1, pattern2=pattern2)

    def nngp(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None,
             memory: Union[int, str, None] = None, layout: str = "auto",
             mask1: Any = None, mask2: Any = None, reproducible: bool = False,
             pattern1: Any = None, pattern2: Any = None) -> torch.Tensor:
        """Only the NNGP kernel (see ``kernel``); no NTK work is done."""
        return self._compute(x1, x2, False, block_size=block_size, memory=memory, layout=layout,
                             mask1=mask1, mask2=mask2, reproducible=reproducible,
                             pattern1=pattern1, pattern2=pattern2).nngp

    def ntk(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None,
            memory: Union[int, str, None] = None, layout: str = "auto",
            mask1: Any = None, mask2: Any = None, reproducible: bool = False,
            pattern1: Any = None, pattern2: Any = None) -> torch.Tensor:
        """Only the NTK (see ``kernel``; its recursion needs the NNGP, not returned)."""
        return self.kernel(x1, x2, block_size=block_size, memory=memory, layout=layout,
                           mask1=mask1, mask2=mask2, reproducible=reproducible,
                           pattern1=pattern1, pattern2=pattern2).ntk

    def _compute(self, x1: Any, x2: Any, want_ntk: bool, *, pattern1: Any, pattern2: Any,
                 **options) -> Kernel:
        owner = f"{self._name}.kernel"
        x1, x2, side1, side2 = _graphs(self, owner, x1, x2, pattern1, pattern2)
        return _engine.compute(
            self._rule, x1, x2, owner=owner, needs_full=self._needs_full(),
            parameters=self._parameters(), want_ntk=want_ntk, side1=side1, side2=side2, **options)

    def apply(self, kernel: Kernel) -> Kernel:
        """Transforms an existing ``Kernel`` by this layer (the input is not modified).

        Example:

            >>> k = wn.Dense(1).kernel(x)          # the first layer's kernel
            >>> k = wn.Serial(wn.Relu(), wn.Dense(1)).apply(k)
        """
        return _engine.transform(self._rule, kernel, f"{self._name}.apply")

    def module(self, input_shape: Union[int, Sequence[int], None] = None, *,
               seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None, device: Union[str, torch.device, None] = None,
               init: str = "gaussian") -> nn.Module:
        """The finite-width ``torch.nn.Module`` whose random initialization has this limit.

        Args:
            input_shape: shape of one input: ``d`` or ``(d,)`` for features, ``(C, *S)`` for
                images and sequences. ``None`` builds the first affine layers lazily: their
                weights materialize on the first forward call.
            seed: network seed; the same seed gives the same network. Without ``seed`` or
                ``generator`` the seed is drawn from torch's global generator, so
                ``torch.manual_seed`` makes it reproducible too.
            generator: a ``torch.Generator`` from which the network seed is drawn.
            dtype, device: of the parameters (default: torch's default dtype, CPU).
            init: how Dense and Conv weights are drawn: ``"gaussian"`` (i.i.d., whose
                infinite-width limit is this layer's kernel), ``"orthogonal"`` (scaled Haar
                orthogonal matrices with the same entry variance, Saxe et al. 2014; a Conv's
                ``(out, in * taps)`` matrix) or ``"delta_orthogonal"`` (as "orthogonal" for
                Dense; a Conv is zero except for an orthogonal centre tap, Xiao et al. 2018).
                Biases and attention projections stay Gaussian. Orthogonal weights keep the
                Gaussian's entry variance, so pre-activation variances follow the same length
                map; a delta-orthogonal Conv acts like a 1x1 convolution at initialization, so
                its network is not the one ``Conv``'s kernel describes. Used for dynamical
                isometry (``theory.jacobian_spectrum``).

        Example:

            >>> model = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1)).module(10, seed=0)
            >>> model(torch.randn(20, 10)).shape
            torch.Size([20, 1])
        """
        owner = f"{self._name}.module"
        if seed is not None and generator is not None:
            raise ParameterError(f"{owner}: give seed or generator, not both")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        else:
            seed = check_int(owner, "seed", seed, minimum=0)
        spec = Shape()
        if input_shape is not None:
            shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
            if not 1 <= len(shape) <= 4:
                raise ShapeError(
                    f"{owner}: input_shape must be (features,) or (channels, *spatial) "
                    f"with 1 to 3 spatial axes (got {shape})"
                )
            for i, n in enumerate(shape):
                check_int(owner, f"input_shape[{i}]", n, minimum=1)
            spec = Shape(int(shape[0]), len(shape) - 1)
        seeds = (derive_seed(seed, i) for i in itertools.count())
        build = Build(seeds, dtype, device, check_choice(owner, "init", init, INITS))
        module, _ = self._twin(spec, build)
        if input_shape is not None:
            module.register_forward_pre_hook(InputCheck(owner, shape))
        module.widenet_layer = self  # the architecture it was built from (``from_torch`` reads it back)
        return module

    def __rshift__(self, other: "Layer") -> "Layer":
        """``a >> b`` is ``Serial(a, b)``."""
        from .combinators import Serial

        return Serial(self, other)


def _layers(layer: Any) -> Iterator[Layer]:
    """Every layer of an architecture, containers and the layers inside them."""
    if isinstance(layer, (tuple, list)):
        for item in layer:
            yield from _layers(item)
    elif dataclasses.is_dataclass(layer) and isinstance(layer, Layer):
        yield layer
        for f in dataclasses.fields(layer):
            yield from _layers(getattr(layer, f.name))


def _graphs(net: Layer, owner: str, x1: Any, x2: Any, pattern1: Any,
            pattern2: Any) -> tuple[Any, Any, Optional[dict], Optional[dict]]:
    """The inputs and, for a network that reads graphs, their validated patterns (before any
    work; the inputs are converted here when the patterns need their shapes)."""
    readers = [layer for layer in _layers(net) if layer._reads_pattern]
    if not readers:
        if pattern1 is not None or pattern2 is not None:
            given = " and ".join(n for n, p in (("pattern1", pattern1), ("pattern2", pattern2)) if p is not None)
            raise ParameterError(f"{owner}: got {given}, but the network has no Aggregate layer to read "
                                 f"graphs; leave the patterns out")
        return x1, x2, None, None
    x1 = as_inputs(owner, "x1", x1)
    x2 = None if x2 is None else as_inputs(owner, "x2", x2, like=x1)
    if x2 is None and pattern2 is not None:
        raise ParameterError(f"{owner}: pattern2 must be None when x2 is None (pattern1 covers x1)")
    prepare = readers[0]._prepare_pattern
    side1 = prepare(owner, "pattern1", pattern1, x1)
    side2 = None if x2 is None else prepare(owner, "pattern2", pattern2, x2)
    return x1, x2, side1, side2


def _hyperparameters(layer: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Tensor-valued hyperparameters of an architecture, with dotted paths."""
    if isinstance(layer, torch.Tensor):
        yield prefix, layer
    elif isinstance(layer, (tuple, list)):
        for i, item in enumerate(layer):
            yield from _hyperparameters(item, f"{prefix}[{i}]")
    elif dataclasses.is_dataclass(layer) and isinstance(layer, Layer):
        for f in dataclasses.fields(layer):
            yield from _hyperparameters(getattr(layer, f.name), f"{prefix}.{f.name}" if prefix else f.name)
