"""GPyTorch and BoTorch: a widenet network's NNGP or NTK as a Gaussian-process kernel.

``InfiniteWidthKernel(net)`` is a ``gpytorch.kernels.Kernel`` whose covariance is the
network's infinite-width kernel and whose hyperparameters are the network's ``W_std`` and
``b_std``: GPyTorch's exact marginal likelihood trains them like an RBF kernel's lengthscale,
and BoTorch's models (``SingleTaskGP(..., covar_module=...)``) take it as it is. It needs the
optional extra ``pip install "widenet[gp]"`` (gpytorch and botorch).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import torch

try:  # absolute: this module is widenet.gpytorch, the package is gpytorch
    import gpytorch
    from gpytorch.constraints import Positive
except ImportError as err:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        "widenet.gpytorch needs gpytorch (and botorch for Bayesian optimization): "
        "pip install 'widenet[gp]'"
    ) from err

from ._validate import as_inputs, check_choice, check_memory
from .errors import ParameterError, ShapeError
from .layers import Dense, Layer

__all__ = ["InfiniteWidthKernel"]

_OWNER = "InfiniteWidthKernel"
_TRAINABLE = ("W_std", "b_std")
_DIAG_CHUNK = 64  # inputs per block when a diagonal is taken from small diagonal blocks


class InfiniteWidthKernel(gpytorch.kernels.Kernel):
    """The NNGP or NTK of a widenet network as a GPyTorch kernel with trainable ``W_std``, ``b_std``.

    The covariance between inputs ``x1`` of shape ``(*batch, n, d)`` and ``x2`` of shape
    ``(*batch, m, d)`` is the network's kernel ``net.nngp(x1, x2)`` (``get="nngp"``, the
    Gaussian process of an infinitely wide Bayesian network, Lee et al. 2018, arXiv
    1711.00165) or ``net.ntk(x1, x2)`` (``get="ntk"``, the neural tangent kernel, Jacot et
    al. 2018, arXiv 1806.07572), of shape ``(*batch, n, m)``; with ``diag=True``, its
    diagonal ``(*batch, n)``. The class follows GPyTorch's ``Kernel`` API (``forward(x1, x2,
    diag)``, ``register_parameter``/``register_constraint``), so it works wherever a GPyTorch
    kernel does: exact GPs, ``ScaleKernel``, sums and products of kernels, BoTorch models.

    **Hyperparameters.** Each name in ``train`` (``"W_std"``, ``"b_std"`` or both; kept as
    ``kernel.trained``) becomes a raw parameter ``raw_W_std``/``raw_b_std`` under GPyTorch's
    ``Positive`` constraint (softplus), read and set as ``kernel.W_std`` / ``kernel.b_std``
    (or ``kernel.initialize(W_std=...)``). The raw parameters start in float64, whatever
    torch's default dtype, so that the kernel before training is the network's to rounding;
    ``.double()``, ``.float()`` and ``.to()`` cast them as for any module. They belong to the
    network's ``Dense`` layers (``b_std`` only to those with a bias, ``b_std`` not None):

    * ``per_layer=False`` (default, the usual choice in the literature): one ``W_std`` and one
      ``b_std`` shared by every Dense layer, 0-d. The Dense layers must then start from one
      value of each trained name (so that the kernel at construction is the network's).
    * ``per_layer=True``: one value per Dense layer, a vector in network order (a layer
      inside ``Repeat`` counts once: its copies share it).

    Every forward call rebuilds the network with the current values as 0-d tensors of the
    inputs' dtype (``dataclasses.replace`` on the frozen layers, through ``Serial``,
    ``Parallel``, ``Repeat`` and every other container), so gradients reach the raw parameters
    through widenet's differentiable kernels. Other hyperparameters (nonlinearities, layers
    that are not Dense) keep the network's values. ``network()`` gives the network with the
    current values as floats.

    The kernel is not stationary: through the input layer's ``x . x' / d`` its prior variance
    grows with the inputs' norm (on a box, the corners have the largest variance, which an
    acquisition function explores first); centring the inputs helps.

    Inputs keep their dtype (float64, BoTorch's default, is recommended) and must be finite.
    Batch dimensions broadcast; a side that is the same for every batch entry (the training
    inputs in a batched posterior) is computed once, against all the other side's rows.
    ``diag=True`` costs O(n): the NNGP's per-input variances come with one kernel against a
    single input, the NTK's diagonal from diagonal blocks of ``64`` inputs. ``last_dim_is_batch``
    (deprecated in GPyTorch) is not supported.

    Args:
        net: a widenet architecture taking ``(N, d)`` inputs with a ``(N, M)`` kernel.
        get: ``"nngp"`` or ``"ntk"``.
        train: the names to train, a subset of ``("W_std", "b_std")``; ``()`` keeps the
            network's kernel fixed.
        per_layer: one value per Dense layer instead of one shared value.
        memory: widenet's memory budget for each kernel computation (see ``Layer.kernel``).
        active_dims: as for every GPyTorch kernel, the input columns the kernel sees.

    Example:

        >>> from widenet.gpytorch import InfiniteWidthKernel
        >>> net = wn.Serial(wn.Dense(512, W_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, W_std=1.5, b_std=0.1))
        >>> kernel = InfiniteWidthKernel(net, get="nngp").double()
        >>> xs = torch.randn(5, 3, dtype=torch.float64)
        >>> kernel(xs).to_dense().shape, kernel(xs, diag=True).shape
        (torch.Size([5, 5]), torch.Size([5]))
        >>> torch.allclose(kernel(xs).to_dense(), net.nngp(xs), rtol=1e-12, atol=0)
        True
        >>> [name for name, _ in kernel.named_parameters()]
        ['raw_W_std', 'raw_b_std']
    """

    def __init__(self, net: Layer, get: str = "nngp", train: Union[str, Sequence[str]] = _TRAINABLE, *,
                 per_layer: bool = False, memory: Union[int, str, None] = None,
                 active_dims: Optional[Sequence[int]] = None) -> None:
        if not isinstance(net, Layer):
            raise ParameterError(f"{_OWNER}: net must be a widenet Layer, e.g. wn.Serial(wn.Dense(512), "
                                 f"wn.Relu(), wn.Dense(1)) (got {type(net).__name__})")
        get = check_choice(_OWNER, "get", get, ("nngp", "ntk"))
        train = _check_train(train)
        if not isinstance(per_layer, bool):
            raise ParameterError(f"{_OWNER}: per_layer must be True or False (got {per_layer!r})")
        if memory is not None:
            memory = check_memory(_OWNER, "memory", memory)
        sites = _dense_sites(net)
        if train and not sites:
            raise ParameterError(
                f"{_OWNER}: net has no Dense layer whose W_std or b_std could be trained (got {net!r}); "
                f"pass train=() to use its kernel with fixed hyperparameters")
        super().__init__(active_dims=active_dims)
        self.net, self.get, self.trained, self.per_layer, self.memory = net, get, train, per_layer, memory
        self._sites: dict[str, list[int]] = {}
        for name in train:
            owned = [(i, path, layer) for i, (path, layer) in enumerate(sites) if getattr(layer, name) is not None]
            if not owned:
                raise ParameterError(
                    f"{_OWNER}: train names {name!r}, but no Dense layer of net has a bias ({name}=None in "
                    f"every one); leave {name!r} out of train")
            values = [_as_float(getattr(layer, name)) for _, _, layer in owned]
            for (_, path, _), v in zip(owned, values):
                if not v > 0:
                    raise ParameterError(
                        f"{_OWNER}: a trained {name} must start > 0 (the Positive constraint cannot "
                        f"represent 0), but the Dense layer at {path} has {name}={v!r}; build the network "
                        f"with {name} > 0 or leave {name!r} out of train")
            if not per_layer and len(set(values)) > 1:
                shown = ", ".join(f"{path}: {v!r}" for (_, path, _), v in zip(owned, values))
                raise ParameterError(
                    f"{_OWNER}: with per_layer=False every Dense layer must start from one shared {name}, "
                    f"but they differ ({shown}); build the network with one value or pass per_layer=True")
            # float64 whatever torch's default dtype, so that the kernel at construction is the
            # network's to rounding; .double(), .float() and .to() cast them as for any module
            init = torch.tensor(values if per_layer else values[0], dtype=torch.float64)
            constraint = Positive()
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(constraint.inverse_transform(init)))
            self.register_constraint(f"raw_{name}", constraint)
            self._sites[name] = [i for i, _, _ in owned]

    # ---- hyperparameters ---------------------------------------------------------------------
    @property
    def W_std(self) -> torch.Tensor:
        """The trained weight standard deviation(s): 0-d, or ``(layers,)`` with ``per_layer``."""
        return self._value("W_std")

    @W_std.setter
    def W_std(self, value: Any) -> None:
        self._set_value("W_std", value)

    @property
    def b_std(self) -> torch.Tensor:
        """The trained bias standard deviation(s): 0-d, or ``(layers with a bias,)`` with ``per_layer``."""
        return self._value("b_std")

    @b_std.setter
    def b_std(self, value: Any) -> None:
        self._set_value("b_std", value)

    def __getattr__(self, name: str) -> Any:
        # reached when the W_std/b_std property raised AttributeError: say why, not "no attribute"
        if name in _TRAINABLE and name not in self.__dict__.get("trained", _TRAINABLE):
            raise AttributeError(f"{_OWNER}: {name} is not trained (train={self.trained!r}); the network's "
                                 f"values are used as they are")
        return super().__getattr__(name)

    def _value(self, name: str) -> torch.Tensor:
        if name not in self.trained:
            raise AttributeError(f"{_OWNER}: {name} is not trained (train={self.trained!r}); the network's "
                                 f"values are used as they are")
        raw = getattr(self, f"raw_{name}")
        return getattr(self, f"raw_{name}_constraint").transform(raw)

    def _set_value(self, name: str, value: Any) -> None:
        if name not in self.trained:
            raise AttributeError(f"{_OWNER}: {name} is not trained (train={self.trained!r})")
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
        if value.shape != raw.shape and value.ndim != 0:
            raise ShapeError(f"{_OWNER}: {name} must have shape {tuple(raw.shape)} or be a scalar "
                             f"(got shape {tuple(value.shape)})")
        if not bool((value > 0).all()) or not bool(torch.isfinite(value).all()):
            raise ParameterError(f"{_OWNER}: {name} must be finite and > 0 (got {value.tolist()!r})")
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value.expand_as(raw))})

    def _network(self, dtype: Optional[torch.dtype] = None, device: Any = None,
                 detach: bool = False) -> Layer:
        """The network with the current hyperparameters as 0-d tensors (or floats, ``detach``)."""
        if not self.trained:
            return self.net
        by_site: dict[int, dict[str, Any]] = {}
        for name in self.trained:
            v = self._value(name)
            v = v.detach() if detach else v.to(dtype=dtype, device=device)
            values = [v] * len(self._sites[name]) if v.ndim == 0 else list(v.unbind())
            for site, value in zip(self._sites[name], values):
                by_site.setdefault(site, {})[name] = float(value) if detach else value
        counter = iter(range(1 << 62))

        def replace(layer: Dense) -> Dense:
            changes = by_site.get(next(counter))
            return dataclasses.replace(layer, **changes) if changes else layer

        return _map_dense(self.net, replace)

    def network(self) -> Layer:
        """The widenet network with the kernel's current ``W_std``/``b_std`` (as floats):
        after training, the fitted architecture, for ``widenet.predict``, the estimators or
        ``net.module()``."""
        return self._network(detach=True)

    # ---- GPyTorch's Kernel API -----------------------------------------------------------------
    def __call__(self, x1: torch.Tensor, x2: Optional[torch.Tensor] = None, diag: bool = False,
                 last_dim_is_batch: bool = False, **params):
        # before any work: GPyTorch evaluates kernels lazily, forward() may run much later
        _check_last_dim(last_dim_is_batch)
        x1 = as_inputs(_OWNER, "x1", x1)
        x2 = None if x2 is None else as_inputs(_OWNER, "x2", x2, like=x1)
        return super().__call__(x1, x2, diag=diag, **params)  # (GPyTorch 2 drops last_dim_is_batch)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False,
                last_dim_is_batch: bool = False, **params) -> torch.Tensor:
        _check_last_dim(last_dim_is_batch)
        same = x1 is x2
        x1 = as_inputs(_OWNER, "x1", x1)
        x2 = as_inputs(_OWNER, "x2", x2, like=x1)
        for name, x in (("x1", x1), ("x2", x2)):
            if x.ndim < 2:
                raise ShapeError(f"{_OWNER}: {name} must have shape (*batch, n, d) (got {tuple(x.shape)})")
        if x1.shape[-1] != x2.shape[-1]:
            raise ShapeError(f"{_OWNER}: x1 and x2 must have the same number of features d (got "
                             f"{tuple(x1.shape)} and {tuple(x2.shape)})")
        try:
            batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        except RuntimeError:
            raise ShapeError(f"{_OWNER}: the batch shapes of x1 and x2 must broadcast (got "
                             f"{tuple(x1.shape)} and {tuple(x2.shape)})") from None
        if not same and not x1.requires_grad and not x2.requires_grad:
            same = x1.shape == x2.shape and torch.equal(x1, x2)
        net = self._network(x1.dtype, x1.device)
        x1 = x1.expand(*batch, *x1.shape[-2:])
        x2 = x2.expand(*batch, *x2.shape[-2:])
        if diag:
            return self._diagonal(net, x1, x2, same)
        return self._full(net, x1, x2, same, batch)

    # ---- computation -------------------------------------------------------------------------
    def _matrix(self, net: Layer, a: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        """The kernel of ``(n, d)`` against ``(m, d)`` inputs (``b=None``: ``a`` against itself)."""
        m = a.shape[0] if b is None else b.shape[0]
        if a.shape[0] == 0 or m == 0:
            return a.new_zeros(a.shape[0], m)
        fn = net.nngp if self.get == "nngp" else net.ntk
        k = fn(a, b, memory=self.memory)
        if k.shape != (a.shape[0], m):
            raise ShapeError(f"{_OWNER}: the network's kernel must be (n, m) for inputs (n, d) and (m, d) "
                             f"(got {tuple(k.shape)} for {a.shape[0]} and {m} inputs); its outputs may not "
                             f"keep spatial axes")
        return k

    def _full(self, net: Layer, x1: torch.Tensor, x2: torch.Tensor, same: bool,
              batch: torch.Size) -> torch.Tensor:
        (n, d), m = x1.shape[-2:], x2.shape[-2]
        if not batch:
            return self._matrix(net, x1, None if same else x2)
        nb, first = len(batch), (0,) * len(batch)
        const1, const2 = _constant(x1, nb), _constant(x2, nb)
        if const1 and const2:  # one matrix for every batch entry
            k = self._matrix(net, x1[first], None if same else x2[first])
            return k.expand(*batch, n, m).contiguous()
        if const2:  # e.g. test points (batch, q, d) against the training inputs: all rows at once
            return self._matrix(net, x1.reshape(-1, d), x2[first]).reshape(*batch, n, m)
        if const1:
            return self._matrix(net, x2.reshape(-1, d), x1[first]).reshape(*batch, m, n).transpose(-1, -2)
        flat1, flat2 = x1.reshape(-1, n, d), x2.reshape(-1, m, d)
        ks = [self._matrix(net, a, None if same else b) for a, b in zip(flat1, flat2)]
        return torch.stack(ks).reshape(*batch, n, m)

    def _diagonal(self, net: Layer, x1: torch.Tensor, x2: torch.Tensor, same: bool) -> torch.Tensor:
        if x1.shape[-2] != x2.shape[-2]:
            raise ShapeError(f"{_OWNER}: diag=True needs x1 and x2 with the same number of inputs (got "
                             f"{tuple(x1.shape)} and {tuple(x2.shape)})")
        out_shape, d = x1.shape[:-1], x1.shape[-1]
        a, b = x1.reshape(-1, d), x2.reshape(-1, d)
        if a.shape[0] == 0:
            return a.new_zeros(out_shape)
        if same and self.get == "nngp":  # the per-input variances of one kernel against one input
            var = net.kernel(a, a[:1].detach(), memory=self.memory).var1
            if var.shape != (a.shape[0],):
                raise ShapeError(f"{_OWNER}: the network's kernel must be (n, m) for inputs (n, d) (its "
                                 f"per-input variances have shape {tuple(var.shape)})")
            return var.reshape(out_shape)
        parts = [self._matrix(net, a[s:s + _DIAG_CHUNK], None if same else b[s:s + _DIAG_CHUNK]).diagonal()
                 for s in range(0, a.shape[0], _DIAG_CHUNK)]
        return torch.cat(parts).reshape(out_shape)

    def extra_repr(self) -> str:
        return f"net={self.net!r}, get={self.get!r}, train={self.trained!r}, per_layer={self.per_layer}"


# ---- helpers ---------------------------------------------------------------------------------------
def _check_train(train: Any) -> tuple[str, ...]:
    names = (train,) if isinstance(train, str) else train
    rule = f"a tuple of names from {', '.join(repr(n) for n in _TRAINABLE)}, each once"
    try:
        names = tuple(names)
    except TypeError:
        raise ParameterError(f"{_OWNER}: train must be {rule} (got {train!r})") from None
    if any(n not in _TRAINABLE for n in names) or len(set(names)) != len(names):
        raise ParameterError(f"{_OWNER}: train must be {rule} (got {train!r})")
    return names


def _as_float(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _check_last_dim(last_dim_is_batch: bool) -> None:
    if last_dim_is_batch:
        raise ParameterError(
            f"{_OWNER}: last_dim_is_batch must be False (got True): a network's kernel takes all "
            f"input features at once (for additive structure over the features, sum kernels on "
            f"active_dims instead)")


def _constant(x: torch.Tensor, nb: int) -> bool:
    """Whether ``x`` (``(*batch, n, d)``, ``nb`` batch axes) is the same for every batch entry:
    expanded (stride 0), or equal by value when no gradient has to reach the copies."""
    if all(x.stride(i) == 0 or x.shape[i] == 1 for i in range(nb)):
        return True
    if x.requires_grad:
        return False
    return torch.equal(x, x[(slice(0, 1),) * nb].expand_as(x))


def _map_dense(obj: Any, fn: Callable[[Dense], Dense]) -> Any:
    """``obj`` with ``fn`` applied to each Dense layer, in network order (depth first, fields in
    declaration order), rebuilding the containers whose layers changed."""
    if isinstance(obj, Dense):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        items = [_map_dense(item, fn) for item in obj]
        if all(new is old for new, old in zip(items, obj)):
            return obj
        return type(obj)(items) if isinstance(obj, list) else tuple(items)
    if isinstance(obj, Layer) and dataclasses.is_dataclass(obj):
        changes = {}
        for f in dataclasses.fields(obj):
            old = getattr(obj, f.name)
            new = _map_dense(old, fn)
            if new is not old:
                changes[f.name] = new
        if not changes:
            return obj
        if type(obj).__dataclass_params__.init and all(f.init for f in dataclasses.fields(obj) if f.name in changes):
            return dataclasses.replace(obj, **changes)
        # Containers with their own __init__ (Serial(*layers), Parallel, Chain): the same object
        # with its layers swapped; their __init__ validates nothing a Dense swap could break.
        new = copy.copy(obj)
        for name, value in changes.items():
            object.__setattr__(new, name, value)
        return new
    return obj


def _dense_sites(net: Layer) -> list[tuple[str, Dense]]:
    """Every Dense layer of ``net`` with its path (``layers[0]``), in the order ``_map_dense`` visits."""
    found: list[tuple[str, Dense]] = []

    def visit(obj: Any, path: str) -> None:
        if isinstance(obj, Dense):
            found.append((path or "the top", obj))
        elif isinstance(obj, (tuple, list)):
            for i, item in enumerate(obj):
                visit(item, f"{path}[{i}]")
        elif isinstance(obj, Layer) and dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)

    visit(net, "")
    return found
