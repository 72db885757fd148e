"""Small-data classification: infinite-width NNGP/NTK classifiers against random forests and
RBF support vector machines, 4-fold stratified cross-validation on scikit-learn's bundled
digits, iris, wine and breast_cancer (Arora et al. 2020, arXiv 1910.01663, found FC-NTK
matching or beating random forests on small UCI data).

Every model sees the same folds and standardized features. The kernel classifiers use
widenet's default architecture (two hidden ReLU layers, W_std = sqrt(2), b_std = 0.1) and
diag_reg = 1e-4, no tuning; the forest has 500 trees; the SVM is sklearn's default RBF SVC.

Usage: python benchmarks/classifiers.py
"""

from __future__ import annotations

import time

from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from widenet.estimators import NNGPClassifier, NTKClassifier

DATASETS = {"digits": load_digits, "iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}
MODELS = {
    "NNGP": lambda: NNGPClassifier(),
    "NTK (t=inf)": lambda: NTKClassifier(),
    "RandomForest": lambda: RandomForestClassifier(n_estimators=500, random_state=0),
    "SVC (RBF)": lambda: SVC(),
}


def main() -> None:
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    names = list(MODELS)
    print("4-fold stratified CV accuracy, mean +- std over folds (fit+predict seconds in brackets)\n")
    print(f"{'dataset':14s} {'N':>5s} " + " ".join(f"{n:>22s}" for n in names))
    for data_name, loader in DATASETS.items():
        x, y = loader(return_X_y=True)
        cells = []
        for model_name in names:
            model = make_pipeline(StandardScaler(), MODELS[model_name]())
            start = time.perf_counter()
            scores = cross_validate(model, x, y, cv=folds)["test_score"]
            seconds = time.perf_counter() - start
            cells.append(f"{scores.mean():.4f}+-{scores.std():.4f} [{seconds:4.1f}]")
        print(f"{data_name:14s} {len(x):5d} " + " ".join(f"{c:>22s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
