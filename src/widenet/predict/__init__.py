"""Inference with infinite-width kernels: pure functions over kernel matrices.

* ``gp_inference``: NNGP / NTK-GP posteriors, and the converged NTK ensemble.
* ``gradient_descent_mse``: outputs at any training time under the MSE, closed form.
* ``gradient_descent``: any differentiable loss (cross-entropy included), with or without
  momentum, by ODE integration in function space.
* ``gradient_descent_mse_ensemble``: mean and covariance over initializations at any time.
* ``max_learning_rate``: the largest stable full-batch learning rate.
* ``marginal_log_likelihood`` and ``fit_hyperparameters``: NNGP evidence and
  type-II maximum likelihood over architecture hyperparameters.
* ``feature_ridge``: ridge regression on explicit features (``widenet.features``' sketches of
  a kernel), ``O(N D^2)``.

Nothing here imports the layers: every function takes kernel matrices (or Kernel objects, or
a callable that computes them), so kernels from any source (analytic, empirical, Monte Carlo,
stored on disk) can be used.
"""

from .dynamics import gradient_descent, gradient_descent_mse, max_learning_rate
from .ensemble import gradient_descent_mse_ensemble
from .fit import FitResult, fit_hyperparameters
from .gp import Gaussian, gp_inference, marginal_log_likelihood
from .ridge import feature_ridge

__all__ = [
    "Gaussian", "gp_inference", "marginal_log_likelihood", "gradient_descent_mse", "gradient_descent",
    "gradient_descent_mse_ensemble", "max_learning_rate", "fit_hyperparameters", "FitResult", "feature_ridge",
]
