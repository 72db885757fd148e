"""scikit-learn estimators backed by infinite-width kernels.

* ``NNGPRegressor``: the posterior of an infinitely wide Bayesian network (Lee et al.
  2018, arXiv 1711.00165), with predictive standard deviations.
* ``NTKRegressor``: the ensemble of infinitely wide networks trained by gradient descent
  on the MSE for time ``t`` (Lee et al. 2019, arXiv 1902.06720); ``t=None`` is convergence.
* ``NNGPClassifier``, ``NTKClassifier``: the same as regression on centered
  one-hot targets (Lee et al. 2018; Arora et al. 2020, arXiv 1910.01663), with
  ``predict_proba`` from the Gaussian predictive distribution of the outputs.

They take a widenet architecture (any ``widenet.Layer``; default a 2-hidden-layer ReLU
network) and work in ``Pipeline`` and ``GridSearchCV`` like any scikit-learn estimator.
Test points are processed in chunks within ``memory``, so predicting on large sets never
holds the whole test-train kernel.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from scipy.special import log_ndtr, roots_hermite
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import ParameterError
from .layers import Dense, Layer, Relu, Serial
from .predict import gp_inference, gradient_descent_mse_ensemble

__all__ = ["NNGPRegressor", "NTKRegressor", "NNGPClassifier", "NTKClassifier", "default_architecture"]

# solver="features" computes features in chunks of this many rows (fit: Phi^T Phi accumulated)
_FEATURE_ROWS = 4096


def default_architecture() -> Layer:
    """Two hidden ReLU layers, ``W_std = sqrt(2)``, ``b_std = 0.1`` (near the ReLU critical point)."""
    return Serial(Dense(1, 2**0.5, 0.1), Relu(), Dense(1, 2**0.5, 0.1), Relu(), Dense(1, 2**0.5, 0.1))


class _KernelFn:
    """``(x1, x2) -> Kernel`` of an architecture within a memory budget (picklable)."""

    def __init__(self, net: Layer, memory: Any) -> None:
        self.net, self.memory = net, memory

    def __call__(self, x1, x2):
        return self.net.kernel(x1, x2, memory=self.memory)


class _KernelModel(BaseEstimator):
    """Shared fitting and prediction: the ensemble predictor of ``widenet.predict``."""

    _get = "nngp"

    def _check_params(self) -> None:
        name = type(self).__name__
        arch = self.architecture
        if arch is not None and not isinstance(arch, Layer):
            raise ParameterError(f"{name}: architecture must be a widenet Layer or None (got {type(arch).__name__})")
        reg = self.diag_reg
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not np.isfinite(reg) or reg < 0:
            raise ParameterError(f"{name}: diag_reg must be a finite float >= 0 (got {reg!r})")
        if self.solver not in ("auto", "direct", "falkon", "features"):
            raise ParameterError(f"{name}: solver must be 'auto', 'direct', 'falkon' or 'features' "
                                 f"(got {self.solver!r})")
        f = self.n_features
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
            raise ParameterError(f"{name}: n_features must be an int >= 1 (got {f!r})")
        m = self.n_centers
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
            raise ParameterError(f"{name}: n_centers must be None or an int >= 1 (got {m!r})")

    def _architecture(self) -> Layer:
        return default_architecture() if self.architecture is None else self.architecture

    def _time(self) -> Optional[float]:
        """Training time for the NTK estimators (their ``t``); None (infinity) for the NNGP."""
        return getattr(self, "t", None)

    def _solver(self, n: int) -> str:
        """"direct" (the N x N kernels in memory, exact, any time t, with variances) or
        "falkon" (Nystrom-preconditioned CG: converged means only); "auto" takes FALKON when
        the two N x N training kernels would not fit the memory budget."""
        if self.solver != "auto":
            return self.solver
        return "falkon" if 2 * 8 * n * n > self._budget() else "direct"

    def _budget(self) -> int:
        from ._validate import available_memory, check_memory

        if self.memory is not None:
            return check_memory(type(self).__name__, "memory", self.memory)
        return available_memory(torch.device("cpu")) // 4

    def _fit_targets(self, X, Y) -> "_KernelModel":
        self._check_params()
        x = torch.tensor(np.asarray(X, dtype=np.float64))
        self.solver_ = self._solver(len(x))
        self.features_weights_ = None
        if self.solver_ == "falkon":
            return self._fit_falkon(x, Y)
        if self.solver_ == "features":
            return self._fit_features(x, Y)
        self.falkon_ = None
        kernel_fn = _KernelFn(self._architecture(), self.memory)
        lr = getattr(self, "learning_rate", 1.0)
        self.predictor_ = gradient_descent_mse_ensemble(kernel_fn, x, torch.from_numpy(Y), learning_rate=lr,
                                                        diag_reg=float(self.diag_reg))
        k = self.predictor_.train_kernel  # computes (and caches) the training kernel now
        # Maximum-likelihood output scale of the NNGP prior y ~ N(0, s K), in closed form
        # s = sum_c y_c^T K^-1 y_c / (N C); it leaves means unchanged and calibrates variances.
        alpha = gp_inference(k.nngp, torch.from_numpy(Y), float(self.diag_reg)).alpha
        self.output_scale_ = float((alpha * torch.from_numpy(Y)).sum()) / Y.size
        return self

    def _converged_only(self, solver: str) -> None:
        """The iterative solvers give the converged network only (t=None)."""
        if self._time() is not None:
            raise ParameterError(
                f"{type(self).__name__}: solver={solver!r} gives the converged network (t=None) only "
                f"(got t={self._time()!r}); use solver='direct' for finite training times"
            )

    def _fit_falkon(self, x, Y) -> "_KernelModel":
        from .blocked import falkon

        self._converged_only("falkon")
        n = len(x)
        # As many centers as half the budget holds of K_nM (float64), unless given.
        m = self.n_centers or max(1, min(n, self._budget() // (2 * 8 * n)))
        self.falkon_ = falkon(self._architecture(), x, torch.from_numpy(Y), n_centers=min(m, n),
                              diag_reg=max(float(self.diag_reg), 1e-12), get=self._get, relative=True,
                              memory=self.memory)
        self.predictor_ = None
        self.output_scale_ = None
        return self

    def _fit_features(self, x, Y) -> "_KernelModel":
        from .features import features
        from .predict.ridge import ridge_weights, streamed_ridge_weights

        name = type(self).__name__
        self._converged_only("features")
        net, m, y = self._architecture(), int(self.n_features), torch.from_numpy(Y)
        dim = features(net, x[:1], m, get=self._get, seed=0).shape[1]
        if dim < len(x):
            # feature space: Phi^T Phi accumulated over row chunks, Phi never held whole (the
            # same seed is the same feature map for every chunk)
            chunks = ((features(net, x[s:s + _FEATURE_ROWS], m, get=self._get, seed=0), y[s:s + _FEATURE_ROWS])
                      for s in range(0, len(x), _FEATURE_ROWS))
            self.features_weights_ = streamed_ridge_weights(name, chunks, float(self.diag_reg))
        else:
            phi = features(net, x, m, get=self._get, seed=0)
            self.features_weights_ = ridge_weights(name, phi, y, float(self.diag_reg))
        self.falkon_ = self.predictor_ = self.output_scale_ = None
        return self

    def _gaussian(self, X, compute_cov):
        x = torch.tensor(np.asarray(X, dtype=np.float64))
        if self.features_weights_ is not None:
            from .features import features

            if compute_cov is not False:
                raise ParameterError(
                    f"{type(self).__name__}: predictive variances (return_std, return_cov, predict_proba, and "
                    f"decision_function with two classes) need solver='direct'; this model was fitted with "
                    f"random features"
                )
            net, m = self._architecture(), int(self.n_features)
            out = [features(net, x[s:s + _FEATURE_ROWS], m, get=self._get, seed=0) @ self.features_weights_
                   for s in range(0, len(x), _FEATURE_ROWS)]
            return torch.cat(out).numpy(), None
        if self.falkon_ is not None:
            if compute_cov is not False:
                raise ParameterError(
                    f"{type(self).__name__}: predictive variances (return_std, return_cov, predict_proba, and "
                    f"decision_function with two classes) need solver='direct'; this model was fitted with FALKON"
                )
            return self.falkon_(x).numpy(), None
        out = self.predictor_(self._time(), x, get=self._get, compute_cov=compute_cov)
        if compute_cov is False:
            return out.numpy(), None
        scale = self.output_scale_ if getattr(self, "calibrate", False) else 1.0
        return out.mean.numpy(), out.covariance.numpy() * scale

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class _Regressor(RegressorMixin, _KernelModel):
    def fit(self, X, y):
        """Computes the training kernel and caches its factorization."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        Y = y.reshape(len(y), -1)
        if self.normalize_y:
            self._y_mean = Y.mean(0)
            self._y_std = Y.std(0)
            self._y_std[self._y_std == 0] = 1.0
        else:
            self._y_mean = np.zeros(Y.shape[1])
            self._y_std = np.ones(Y.shape[1])
        return self._fit_targets(X, (Y - self._y_mean) / self._y_std)

    def predict(self, X, return_std: bool = False, return_cov: bool = False):
        """Predictive mean; with ``return_std`` (or ``return_cov``) also the predictive
        standard deviation (covariance) of each output, as ``GaussianProcessRegressor``."""
        if return_std and return_cov:
            raise ParameterError(f"{type(self).__name__}.predict: return_std and return_cov cannot both be True")
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        mode = True if return_cov else ("variance" if return_std else False)
        mean, cov = self._gaussian(X, mode)
        mean = mean.reshape(len(X), -1) * self._y_std + self._y_mean
        if self._y_1d:
            mean = mean[:, 0]
        if not mode:
            return mean
        scale = self._y_std if not self._y_1d else self._y_std[0]
        if return_cov:
            return mean, cov if self._y_1d else cov[..., None] * (self._y_std**2)
        std = np.sqrt(np.clip(cov, 0, None))
        return mean, std * scale if self._y_1d else std[:, None] * self._y_std

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class NNGPRegressor(_Regressor):
    """Regression with the posterior of an infinitely wide Bayesian network (NNGP).

    Args:
        architecture: a widenet architecture (None: ``default_architecture``).
        diag_reg: observation noise as a ridge relative to the kernel's mean diagonal.
        normalize_y: center and scale the targets before fitting (the prior has mean zero).
        memory: working-memory budget of each kernel computation (bytes or "2GB"); with
            ``solver="auto"`` also what decides between the solvers.
        solver: "direct" (the N x N training kernels in memory: exact, any training time, with
            predictive variances), "falkon" (Nystrom-preconditioned conjugate gradients over
            ``n_centers`` centers, ``widenet.blocked.falkon``: for N whose kernels do not
            fit in memory; converged means only), "features" (ridge regression on
            ``widenet.features`` random features of the kernel: ``O(N D^2)``, fully connected
            networks of Dense layers and nonlinearities; converged means only, approximate
            with an error that shrinks as ``1 / sqrt(n_features)``) or "auto": FALKON when the
            two N x N training kernels exceed ``memory`` (default a quarter of the available RAM).
        n_centers: FALKON's number of centers (default: as many as half of ``memory`` holds
            of the N x M kernel).
        n_features: the random features' ``n_features`` for ``solver="features"``.
    """

    _get = "nngp"

    def __init__(self, architecture: Optional[Layer] = None, diag_reg: float = 1e-4, normalize_y: bool = False,
                 memory: Any = None, solver: str = "auto", n_centers: Optional[int] = None, n_features: int = 4096):
        self.architecture = architecture
        self.diag_reg = diag_reg
        self.normalize_y = normalize_y
        self.memory = memory
        self.solver = solver
        self.n_centers = n_centers
        self.n_features = n_features


class NTKRegressor(_Regressor):
    """Regression with the mean over initializations of infinitely wide networks trained by
    gradient descent on the MSE for ``t`` steps of size ``learning_rate`` (``t=None``: trained
    to convergence, i.e. NTK kernel regression).

    Args:
        architecture, diag_reg, normalize_y, memory, solver, n_centers, n_features: as ``NNGPRegressor``
            (FALKON needs ``t=None``).
        t: training time in steps, or None for infinity.
        learning_rate: step size (time is ``learning_rate * t``).
    """

    _get = "ntk"

    def __init__(self, architecture: Optional[Layer] = None, diag_reg: float = 1e-4, t: Optional[float] = None,
                 learning_rate: float = 1.0, normalize_y: bool = False, memory: Any = None, solver: str = "auto",
                 n_centers: Optional[int] = None, n_features: int = 4096):
        self.architecture = architecture
        self.diag_reg = diag_reg
        self.t = t
        self.learning_rate = learning_rate
        self.normalize_y = normalize_y
        self.memory = memory
        self.solver = solver
        self.n_centers = n_centers
        self.n_features = n_features


def _argmax_probabilities(mean: np.ndarray, var: np.ndarray, degree: int = 64) -> np.ndarray:
    """``P(class c has the largest output)`` for independent outputs ``N(mean_c, var)``:
    ``E_{z ~ N(mean_c, var)} prod_{c' != c} Phi((z - mean_c') / sd)`` by Gauss-Hermite
    quadrature, in log space; zero variance gives the argmax."""
    m, c = mean.shape
    sd = np.sqrt(np.clip(var, 0, None))
    probs = np.zeros((m, c))
    exact = sd <= 1e-12 * np.maximum(np.abs(mean).max(1), 1e-300)
    if exact.any():
        winners = mean[exact] == mean[exact].max(1, keepdims=True)
        probs[exact] = winners / winners.sum(1, keepdims=True)
    rows = ~exact
    if rows.any():
        nodes, weights = roots_hermite(degree)
        mu, s = mean[rows], sd[rows]
        z = mu[:, :, None] + np.sqrt(2) * s[:, None, None] * nodes[None, None, :]  # (m, c, q)
        # log Phi((z - mu_c') / s) for every class c' at every node of every class c.
        logcdf = log_ndtr((z[:, :, None, :] - mu[:, None, :, None]) / s[:, None, None, None])  # (m, c, c', q)
        total = logcdf.sum(2) - np.diagonal(logcdf, axis1=1, axis2=2).transpose(0, 2, 1)
        p = (np.exp(total) * weights[None, None, :]).sum(-1) / np.sqrt(np.pi)
        probs[rows] = p / p.sum(1, keepdims=True)
    return probs


class _Classifier(ClassifierMixin, _KernelModel):
    def fit(self, X, y):
        """Regresses centered one-hot targets (``1 - 1/C`` for the class, ``-1/C`` elsewhere)."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        codes = self._encoder.transform(y)
        n_classes = max(len(self.classes_), 2)
        targets = np.full((len(y), n_classes), -1.0 / n_classes)
        targets[np.arange(len(y)), codes] += 1.0
        return self._fit_targets(X, targets)

    def decision_function(self, X):
        """Mean network outputs per class. For two classes, the probit of ``predict_proba``:
        ``(mean_1 - mean_0) / (sqrt(2) sd)``, positive for class 1 (so that it ranks points as
        the probabilities do even though the predictive variance differs between points)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if len(self.classes_) == 2:
            mean, var = self._gaussian(X, "variance")
            diff = mean[:, 1] - mean[:, 0]
            sd = np.sqrt(2 * np.clip(var, 0, None))
            return diff / np.maximum(sd, 1e-12 * np.maximum(np.abs(mean).max(1), 1e-300))
        mean, _ = self._gaussian(X, False)
        return mean

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        mean, _ = self._gaussian(X, False)
        if len(self.classes_) == 1:
            return np.repeat(self.classes_, len(X))
        return self.classes_[mean[:, : len(self.classes_)].argmax(1)]

    def predict_proba(self, X):
        """Probability that each class has the largest output under the Gaussian predictive
        distribution (independent outputs sharing the predictive variance)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        mean, var = self._gaussian(X, "variance")
        if len(self.classes_) == 1:
            return np.ones((len(X), 1))
        return _argmax_probabilities(mean, var)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class NNGPClassifier(_Classifier):
    """Classification by NNGP regression on centered one-hot targets (Lee et al. 2018).

    Args:
        architecture, diag_reg, memory, solver, n_centers, n_features: as ``NNGPRegressor`` (FALKON
            gives ``predict`` and the decision function of several classes, not probabilities).
        calibrate: scale the predictive variances by the maximum-likelihood output scale of
            the NNGP prior, ``sum_c y_c^T K^-1 y_c / (N C)`` (closed form; means and ``predict``
            are unchanged). Without it the prior's unit scale usually gives overconfident
            probabilities.
    """

    _get = "nngp"

    def __init__(self, architecture: Optional[Layer] = None, diag_reg: float = 1e-4, calibrate: bool = True,
                 memory: Any = None, solver: str = "auto", n_centers: Optional[int] = None, n_features: int = 4096):
        self.architecture = architecture
        self.diag_reg = diag_reg
        self.calibrate = calibrate
        self.memory = memory
        self.solver = solver
        self.n_centers = n_centers
        self.n_features = n_features


class NTKClassifier(_Classifier):
    """Classification by infinitely wide networks trained on centered one-hot targets with
    the MSE for time ``t`` (None: convergence); probabilities from the ensemble's Gaussian.

    Args:
        architecture, diag_reg, t, learning_rate, memory, solver, n_centers, n_features: as
            ``NTKRegressor`` and ``NNGPClassifier``.
        calibrate: as ``NNGPClassifier``.
    """

    _get = "ntk"

    def __init__(self, architecture: Optional[Layer] = None, diag_reg: float = 1e-4, t: Optional[float] = None,
                 learning_rate: float = 1.0, calibrate: bool = True, memory: Any = None, solver: str = "auto",
                 n_centers: Optional[int] = None, n_features: int = 4096):
        self.architecture = architecture
        self.diag_reg = diag_reg
        self.t = t
        self.learning_rate = learning_rate
        self.calibrate = calibrate
        self.memory = memory
        self.solver = solver
        self.n_centers = n_centers
        self.n_features = n_features
