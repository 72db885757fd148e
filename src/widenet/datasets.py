"""Embedded data: scikit-learn's bundled sets and MNIST-1D generated locally (no network)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ParameterError

__all__ = ["Dataset", "load", "DATASETS"]

DATASETS = ("digits", "mnist1d", "iris", "wine", "breast_cancer")


@dataclass(frozen=True)
class Dataset:
    """Standardized features and integer labels, split into train and test.

    Features are centred and scaled with the training set's statistics, so every feature has
    unit variance and ``x . x' / d`` is a correlation-like input kernel.
    """

    name: str
    x_train: torch.Tensor  # (N_train, d)
    y_train: torch.Tensor  # (N_train,) int64
    x_test: torch.Tensor  # (N_test, d)
    y_test: torch.Tensor  # (N_test,) int64
    n_classes: int

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Centred one-hot regression targets ``e_y - 1/C`` (Lee et al. 2018)."""
        y = torch.nn.functional.one_hot(labels, self.n_classes).to(self.x_train.dtype)
        return y - 1.0 / self.n_classes


def load(name: str = "digits", *, n_train: int | None = None, seed: int = 0,
         dtype: torch.dtype = torch.float64) -> Dataset:
    """Loads ``name`` (one of :data:`DATASETS`), optionally keeping ``n_train`` training points."""
    if name not in DATASETS:
        raise ParameterError(f"load: name must be one of {', '.join(map(repr, DATASETS))} (got {name!r})")
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = seed if seed else args.seed
        data = make_dataset(args)
        x_train, y_train, x_test, y_test = data["x"], data["y"], data["x_test"], data["y_test"]
    else:
        import sklearn.datasets
        from sklearn.model_selection import train_test_split

        bunch = getattr(sklearn.datasets, f"load_{name}")()
        x_train, x_test, y_train, y_test = train_test_split(
            bunch.data, bunch.target, test_size=0.25, random_state=seed, stratify=bunch.target
        )
    if n_train is not None:
        if n_train < 2 or n_train > len(x_train):
            raise ParameterError(f"load: n_train must be in [2, {len(x_train)}] for {name} (got {n_train})")
        keep = np.random.default_rng(seed).permutation(len(x_train))[:n_train]
        x_train, y_train = x_train[keep], y_train[keep]
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    to = lambda a: torch.as_tensor((a - mean) / std, dtype=dtype)  # noqa: E731
    labels = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731
    n_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    return Dataset(name, to(x_train), labels(y_train), to(x_test), labels(y_test), n_classes)
