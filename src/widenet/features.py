"""Random-feature sketches of the NNGP and NTK: ``Phi(x1) @ Phi(x2).T`` approximates the kernel.

``features(net, x, n_features)`` maps each input to ``D`` numbers, so that inner products of
feature vectors approximate ``net.kernel(x1, x2).nngp`` or ``.ntk``; ``feature_ridge`` then
fits kernel ridge regression in ``O(N D^2)`` time and ``O(N D)`` memory instead of the
``O(N^2)`` kernel and ``O(N^3)`` solve.

The construction is the classic random-feature recursion (Rahimi & Recht 2007; Cho & Saul
2009; Daniely et al. 2016, arXiv 1602.05897) with the NTK features of Zandieh et al. 2021,
"Scaling Neural Tangent Kernels via Sketching and Random Features" (arXiv 2106.07880). It
keeps NNGP features ``Z`` (``Z(x) . Z(x') ~ K``) and NTK features ``Psi``
(``Psi(x) . Psi(x') ~ Theta``) layer by layer, with ``m = n_features``:

* input: ``Z = x / sqrt(d)`` (``K0 = x . x' / d``), ``Psi`` empty (``Theta0 = 0``);
* ``Dense``, parameterization "ntk": ``Z' = [W_std Z, b_std]``, ``Psi' = [Z', W_std Psi]``;
  "standard": ``Z' = [W_std Z, b_std]``, ``Psi' = [sqrt(n_in) Z, W_std Psi, 1]`` (the bias
  entries only with a bias, ``b_std`` not None);
* nonlinearity ``phi``: ``u = Z G`` with ``G`` a ``(dim Z, m)`` matrix of i.i.d. N(0, 1)
  entries (each column of ``u`` a centred Gaussian with covariance ``K``);
  ``Z' = phi(u) / sqrt(m)``, ``Dv = phi'(u) / sqrt(m)`` (``Dv . Dv' ~ Tdot``), and ``Psi'``
  the TensorSRHT sketch of the tensor product ``Dv (x) Psi`` (Ahle et al. 2020, arXiv
  1909.01410; Zandieh et al. 2021): ``Psi'_k = (H s1 Dv)_{i_k} (H s2 Psi)_{j_k} / sqrt(m)``
  with ``H`` the (unnormalized, +-1) Hadamard transform of the zero-padded vector, ``s1, s2``
  random signs and ``i_k, j_k`` uniform indices, so that ``E[Psi' . Psi''] =
  (Dv . Dv')(Psi . Psi')`` exactly; no ``m x dim Psi`` tensor product is ever formed.

Every random draw comes from ``torch.Generator().manual_seed(seed)`` with sizes that depend
only on the input dimension, the architecture and ``n_features``, never on the number of
inputs; inputs go through in chunks of a fixed number of rows (zero-padded), elementwise
functions through ``widenet._engine.exact.elementwise``. So the same seed is the same feature
map for every batch: on CPU the features of a concatenated batch are the concatenation of
the features of its parts, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from ._engine import exact
from ._validate import as_inputs, by_get, check_gets, check_int
from .errors import LayerOrderError, ParameterError, ShapeError
from .layers import Dense, Identity, Layer, Nonlinearity, Repeat, Serial
from .predict.ridge import feature_ridge  # re-exported: wn.feature_ridge

__all__ = ["features", "feature_ridge"]

_OWNER = "features"
# Inputs per chunk: every matrix product has the same shape whatever N (BLAS picks its
# kernels and summation order from the shapes), so each row's bits depend on that row only.
_ROWS = 64


class _Dense:
    def __init__(self, layer: Dense, n_in: int) -> None:
        self.layer, self.n_in = layer, n_in
        self.bias = layer.b_std is not None


class _Phi:
    """A run of elementwise nonlinearities as one function of the Gaussian pre-activation,
    its derivative by the chain rule (as ``Serial`` merges them into a ``Chain``)."""

    def __init__(self, layers: tuple) -> None:
        self.layers = layers

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.fn(x)
        return x

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for layer in self.layers:
            d = layer.derivative(x)
            out = d if out is None else out * d
            x = layer.fn(x)
        return out


def _flatten(net: Layer) -> list:
    """The layers of a Serial network in order (nested Serials and Repeats unrolled, Identity
    left out), or a ParameterError naming the first layer a sketch does not support."""
    out = []

    def walk(layer: Any) -> None:
        if isinstance(layer, Serial):
            for inner in layer.layers:
                walk(inner)
        elif isinstance(layer, Repeat):
            for _ in range(layer.n):
                walk(layer.layer)
        elif isinstance(layer, Identity):
            pass
        elif isinstance(layer, (Dense, Nonlinearity)):
            out.append(layer)
        else:
            shown = repr(layer) if isinstance(layer, Layer) else type(layer).__name__
            raise ParameterError(
                f"{_OWNER}: net must be a Serial network of Dense layers and elementwise "
                f"nonlinearities (got {shown}); random-feature sketches support only those. For "
                f"this network compute the exact kernel, net.kernel(x1, x2), or in tiles with "
                f"widenet.blocked.compute"
            )

    if not isinstance(net, Layer):
        raise ParameterError(f"{_OWNER}: net must be a widenet layer (got {type(net).__name__})")
    walk(net)
    return out


def _plan(net: Layer, d: int) -> list:
    """The steps of the recursion: ``_Dense`` (with its input's declared width) and ``_Phi``
    (a run of nonlinearities), checked as ``net.kernel`` checks the order of layers."""
    steps, width, gaussian = [], d, False
    for layer in _flatten(net):
        if isinstance(layer, Dense):
            steps.append(_Dense(layer, width))
            width, gaussian = layer.out_features, True
        elif steps and isinstance(steps[-1], _Phi):
            steps[-1] = _Phi(steps[-1].layers + (layer,))
        elif not gaussian:
            raise LayerOrderError(
                f"{_OWNER}: {layer!r} needs a Gaussian input, the output of a Dense layer; add "
                f"a Dense layer before it (a nonlinearity cannot follow the network input)"
            )
        else:
            steps.append(_Phi((layer,)))
            gaussian = False
    return steps


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _step_dims(step: Any, dz: int, dpsi: int, m: int) -> tuple[int, int]:
    """(dim Z, dim Psi) after ``step`` from (dim Z, dim Psi) before it."""
    if isinstance(step, _Dense):
        # ntk: [Z', W Psi] = (dz + bias) + dpsi; standard: [sqrt(n_in) Z, W Psi, 1]: the same.
        return dz + step.bias, dz + step.bias + dpsi
    return m, m


def _indices(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """``m`` indices in ``[0, n)``, each uniform: whole random permutations, one after the
    other (without replacement within each, which lowers the sketch's variance)."""
    parts = [torch.randperm(n, generator=gen) for _ in range(-(-m // n))]
    return torch.cat(parts)[:m]


def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=gen).mul_(2).sub_(1)


class _Draws:
    """The random matrices of one nonlinearity: ``G`` ``(dim Z, m)``, and the TensorSRHT's
    signs and indices. Drawn in float32 on the CPU (the same map for float32 and float64
    inputs), then converted."""

    def __init__(self, dz: int, dpsi: int, m: int, gen: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.g = torch.randn(dz, m, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
        self.p1, self.p2 = _pow2(m), _pow2(max(dpsi, 1))
        self.s1 = _signs(self.p1, gen).to(dtype=dtype, device=device)
        self.s2 = _signs(self.p2, gen).to(dtype=dtype, device=device)
        self.i1 = _indices(self.p1, m, gen).to(device)
        self.i2 = _indices(self.p2, m, gen).to(device)


def _hadamard(x: torch.Tensor) -> torch.Tensor:
    """The unnormalized Walsh-Hadamard transform of each row (length a power of two), by
    butterflies: only additions and subtractions, the same bits whatever the row's place."""
    rows, n = x.shape
    h = 1
    while h < n:
        v = x.view(rows, n // (2 * h), 2, h)
        a, b = v[:, :, 0], v[:, :, 1]
        x = torch.stack((a + b, a - b), dim=2).view(rows, n)
        h *= 2
    return x


def _srht(a: torch.Tensor, signs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    padded = a.new_zeros(a.shape[0], signs.shape[0])
    padded[:, :a.shape[1]] = a
    return _hadamard(padded.mul_(signs))[:, idx]


def _elementwise(fn: Callable, u: torch.Tensor) -> torch.Tensor:
    if u.device.type != "cpu":
        return fn(u)
    with exact.enabled():  # every element through the vectorized loop, wherever it falls
        return exact.elementwise(fn, u)


def _chunk(x: torch.Tensor, steps: list, draws: list, m: int, want_ntk: bool) -> tuple:
    """``(Z, Psi)`` of one chunk of inputs (``Psi`` None unless ``want_ntk``)."""
    rows, d = x.shape
    z = x / math.sqrt(d)
    psi = x.new_zeros(rows, 0) if want_ntk else None
    scale = 1.0 / math.sqrt(m)
    k = 0
    for step in steps:
        if isinstance(step, _Dense):
            layer = step.layer
            parts = [z * layer.W_std]
            if step.bias:
                parts.append(x.new_ones(rows, 1) * layer.b_std)
            z_new = torch.cat(parts, dim=1)
            if want_ntk:
                if layer.parameterization == "ntk":
                    psi = torch.cat([z_new, psi * layer.W_std], dim=1)
                else:
                    tail = [x.new_ones(rows, 1)] if step.bias else []
                    psi = torch.cat([z * math.sqrt(step.n_in), psi * layer.W_std, *tail], dim=1)
            z = z_new
        else:
            draw = draws[k]
            k += 1
            u = z @ draw.g
            z = _elementwise(step.fn, u).mul_(scale)
            if want_ntk:
                dv = _elementwise(step.derivative, u).mul_(scale)
                if psi.shape[1] == 0:
                    psi = x.new_zeros(rows, m)
                else:
                    psi = _srht(dv, draw.s1, draw.i1).mul_(_srht(psi, draw.s2, draw.i2)).mul_(scale)
    return z, psi


def features(net: Layer, x: Any, n_features: int, get: Any = "ntk", seed: int = 0, *,
             dtype: Optional[torch.dtype] = None) -> Any:
    """Random features ``Phi`` of shape ``(N, D)`` whose inner products approximate the
    infinite-width kernel: ``Phi(x1) @ Phi(x2).T ~ net.kernel(x1, x2).ntk`` (``get="ntk"``)
    or ``.nngp`` (``get="nngp"``).

    Supported networks are ``Serial``s (nested ones, ``Repeat`` and ``Identity`` included) of
    ``Dense`` layers, both parameterizations, and elementwise nonlinearities (any
    ``widenet.layers.Nonlinearity``: ``Relu``, ``Erf``, ``Tanh``, ``Gelu``, ...; a run of
    them acts as their composition), on inputs ``(N, d)``. Like the kernel, the features are
    per output: the last ``Dense``'s ``out_features`` does not enter them.

    The construction (the module docstring gives it in full) is the random-feature recursion
    of the NNGP (Rahimi & Recht 2007; Cho & Saul 2009; Daniely et al. 2016) with the NTK
    random features of Zandieh et al. 2021 (arXiv 2106.07880): at each nonlinearity,
    ``Z' = phi(Z G) / sqrt(m)`` with a Gaussian ``G`` and ``Psi'`` a TensorSRHT sketch of
    ``phi'(Z G) / sqrt(m)`` tensor ``Psi``, where ``m = n_features``; ``Dense`` layers
    concatenate and scale. Given the previous layer's features each layer's estimate is
    unbiased; across layers the bias is of order ``1 / n_features``, below the random error,
    whose standard deviation in each kernel entry shrinks as ``1 / sqrt(n_features)``
    (Zandieh et al. 2021 bound it for ReLU networks). Cost: ``O(N m (dim Z + m log m))``
    per nonlinearity, ``O(N D)`` memory for the result and ``O(m dim Z)`` for the random
    matrices (drawn anew in each call).

    ``D``, exactly: ``Z`` (the NNGP features) starts with ``d`` columns, a ``Dense`` adds one
    when it has a bias (``b_std`` not None; the default ``b_std=0.0`` counts), and a
    nonlinearity (or a run of them) makes it ``m``; ``Psi`` (the NTK features) starts with 0,
    a ``Dense`` makes it ``dim Z + dim Psi`` plus one when it has a bias (``Z`` taken before
    the layer), and a nonlinearity makes it ``m``. So a network ending
    ``..., nonlinearity, Dense`` has ``D = m + 1`` for the NNGP and ``D = 2 m + 1`` for the
    NTK when that ``Dense`` has a bias, ``m`` and ``2 m`` with ``b_std=None``; a network
    ending with a nonlinearity has ``D = m`` for both.

    Args:
        net: the architecture.
        x: inputs ``(N, d)`` (a tensor or numpy array of floats; float16 and bfloat16 are
            computed in float32).
        n_features: ``m``, the number of random features of every nonlinearity (>= 1).
        get: "ntk", "nngp", or a tuple of both for a named tuple of the two feature maps
            (computed together).
        seed: the feature map: every random matrix is drawn from
            ``torch.Generator().manual_seed(seed)`` with sizes that depend on ``d``, the
            architecture and ``n_features`` only, so separate calls with the same seed give
            consistent features (on CPU, the features of a concatenated batch equal the
            concatenation of the features of its parts, bit for bit).
        dtype: float32 or float64 (default: ``x``'s). The random matrices are the same for
            both, so the two agree to rounding.

    Returns:
        ``Phi`` ``(N, D)`` on ``x``'s device (not recorded by autograd), or a named tuple
        ``(nngp, ntk)`` of them for a tuple ``get``.

    Raises:
        ParameterError: ``n_features`` not an integer >= 1, ``get`` not "nngp" or "ntk",
            ``seed`` not an integer >= 0, ``dtype`` not float32 or float64, a network with a
            layer other than those above (the message names it; use ``net.kernel`` or
            ``widenet.blocked.compute`` instead), or ``x`` not floating point.
        LayerOrderError: a nonlinearity that does not follow a ``Dense`` layer.
        ShapeError: ``x`` not 2-D or with no features.
        NonFiniteInputError: ``x`` holds NaN or Inf (each of these before any work).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1))
        >>> phi = wn.features(net, torch.randn(20, 10), 4096)
        >>> phi.shape
        torch.Size([20, 8193])
        >>> wn.features(net, torch.randn(20, 10), 4096, get="nngp").shape
        torch.Size([20, 4097])
    """
    m = check_int(_OWNER, "n_features", n_features, minimum=1)
    names, many = check_gets(_OWNER, get, ("nngp", "ntk"))
    seed = check_int(_OWNER, "seed", seed, minimum=0)
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ParameterError(f"{_OWNER}: dtype must be torch.float32, torch.float64 or None (got {dtype!r})")
    _flatten(net)  # the architecture, before looking at the inputs
    x = as_inputs(_OWNER, "x", x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ShapeError(
            f"{_OWNER}: x must be a 2-D tensor (N, d) of inputs with d >= 1 features "
            f"(got shape {tuple(x.shape)}); random-feature sketches take fully connected inputs"
        )
    if dtype is not None:
        x = x.to(dtype)
    if x.dtype not in (torch.float32, torch.float64):
        raise ParameterError(f"{_OWNER}: x must be float32 or float64 (got dtype {x.dtype})")
    n, d = x.shape
    steps = _plan(net, d)
    want_ntk = "ntk" in names
    gen = torch.Generator().manual_seed(seed)
    draws, dz, dpsi = [], d, 0  # the random matrices, in the order of the layers
    for step in steps:
        if isinstance(step, _Phi):
            draws.append(_Draws(dz, dpsi, m, gen, x.dtype, x.device))
        dz, dpsi = _step_dims(step, dz, dpsi, m)
    out_z = x.new_empty(n, dz) if "nngp" in names else None
    out_psi = x.new_empty(n, dpsi) if want_ntk else None
    with torch.no_grad():
        for start in range(0, n, _ROWS):
            rows = min(_ROWS, n - start)
            chunk = x[start:start + rows]
            if rows < _ROWS:
                chunk = torch.cat([chunk, chunk.new_zeros(_ROWS - rows, d)])
            z, psi = _chunk(chunk, steps, draws, m, want_ntk)
            if out_z is not None:
                out_z[start:start + rows] = z[:rows]
            if out_psi is not None:
                out_psi[start:start + rows] = psi[:rows]
    return by_get(names, many, lambda name: out_z if name == "nngp" else out_psi)
