"""scikit-learn estimators: the estimator contract (check_estimator), composition (Pipeline,
GridSearchCV), and agreement with widenet.predict and with sampling of the predictive."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import widenet as wn
from widenet import predict as P
from widenet.estimators import NNGPClassifier, NNGPRegressor, NTKClassifier, NTKRegressor, _argmax_probabilities

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")


@parametrize_with_checks([NNGPRegressor(), NTKRegressor(t=50.0), NNGPClassifier(), NTKClassifier()])
def test_scikit_learn_estimator_contract(estimator, check):
    check(estimator)


def _regression(seed=0, n=40, m=10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + m, 4))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    return x[:n], y[:n], x[n:]


def test_regressors_equal_the_predict_functions():
    x, y, xt = _regression()
    net = wn.Serial(wn.Dense(1, 1.3, 0.2), wn.Erf(), wn.Dense(1, 1.3, 0.2))
    tx, ty, tt = (torch.from_numpy(a) for a in (x, y, xt))
    k, kt, ktt = net.kernel(tx), net.kernel(tt, tx), net.kernel(tt)
    mean, std = NNGPRegressor(net, diag_reg=1e-3).fit(x, y).predict(xt, return_std=True)
    ref = P.gp_inference(k.nngp, ty, 1e-3)(kt.nngp, ktt.nngp)
    np.testing.assert_allclose(mean, ref.mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, ref.covariance.diagonal().sqrt().numpy(), rtol=1e-8)
    mean = NTKRegressor(net, diag_reg=1e-3, t=30.0, learning_rate=0.5).fit(x, y).predict(xt)
    ref = P.gradient_descent_mse_ensemble(net, tx, ty, learning_rate=0.5, diag_reg=1e-3)(30.0, tt, get="ntk")
    np.testing.assert_allclose(mean, ref.numpy(), rtol=1e-10, atol=1e-12)
    # normalize_y: the prior fits centered, scaled targets; means come back in target units.
    shifted = NNGPRegressor(net, diag_reg=1e-3, normalize_y=True).fit(x, 10 + 3 * y).predict(xt)
    sd = ty.std(unbiased=False)
    ref = 10 + 3 * ty.mean() + 3 * sd * P.gp_inference(k.nngp, (ty - ty.mean()) / sd, 1e-3)(kt.nngp)
    np.testing.assert_allclose(shifted, ref.numpy(), rtol=1e-10)
    # Two outputs: one column each, sharing the kernel.
    both = NNGPRegressor(net, diag_reg=1e-3).fit(x, np.stack([y, -y], 1)).predict(xt)
    np.testing.assert_allclose(both[:, 0], -both[:, 1], rtol=1e-12)


def test_classifier_probabilities_match_sampling_of_the_predictive():
    """predict_proba is P(argmax) under independent N(mean_c, var) outputs: compare with
    200,000 samples (standard error < 0.0012)."""
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(5, 4))
    var = rng.uniform(0.1, 2.0, size=5)
    probs = _argmax_probabilities(mean, var)
    samples = mean[:, None, :] + np.sqrt(var)[:, None, None] * rng.normal(size=(5, 200_000, 4))
    counts = np.stack([(samples.argmax(-1) == c).mean(1) for c in range(4)], 1)
    np.testing.assert_allclose(probs, counts, atol=0.006)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
    exact = _argmax_probabilities(mean, np.zeros(5))
    np.testing.assert_array_equal(exact, np.eye(4)[mean.argmax(1)])


def test_classifiers_in_pipeline_and_grid_search():
    x, y = load_iris(return_X_y=True)
    search = GridSearchCV(make_pipeline(StandardScaler(), NTKClassifier()),
                          {"ntkclassifier__diag_reg": [1e-3, 1e-1], "ntkclassifier__t": [None, 100.0]}, cv=3)
    search.fit(x, y)
    assert search.best_score_ > 0.85
    model = make_pipeline(StandardScaler(), NNGPClassifier()).fit(x[::2], y[::2])
    proba = model.predict_proba(x[1::2])
    assert proba.shape == (75, 3)
    np.testing.assert_array_equal(model.classes_[proba.argmax(1)], model.predict(x[1::2]))
    assert (model.predict(x[1::2]) == y[1::2]).mean() > 0.85
    # Calibration rescales variances only: the same decisions, less confident probabilities.
    raw = make_pipeline(StandardScaler(), NNGPClassifier(calibrate=False)).fit(x[::2], y[::2])
    np.testing.assert_array_equal(raw.predict(x[1::2]), model.predict(x[1::2]))
    assert model[-1].output_scale_ > 1 and proba.max(1).mean() < raw.predict_proba(x[1::2]).max(1).mean()


def test_estimator_errors():
    with pytest.raises(ValueError, match="architecture must be a widenet Layer"):
        NNGPRegressor(architecture="relu").fit(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="diag_reg must be a finite float >= 0"):
        NTKClassifier(diag_reg=-1.0).fit(np.eye(3), [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        NNGPRegressor().fit(np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2))


def test_features_solver_approaches_the_direct_means_as_features_grow():
    from sklearn.datasets import load_digits

    from widenet.errors import ParameterError

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1)
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[600:900], y[600:900]
    errors = []
    for cls in (NTKRegressor, NNGPRegressor):
        direct = cls(diag_reg=1e-2, solver="direct").fit(Xtr, ytr.astype(float)).predict(Xte)
        for n_features in (256, 4096):
            model = cls(diag_reg=1e-2, solver="features", n_features=n_features).fit(Xtr, ytr.astype(float))
            assert model.solver_ == "features"
            pred = model.predict(Xte)
            errors.append(float(np.abs(pred - direct).max() / np.abs(direct).max()))
    # the sketch's kernel error shrinks as 1/sqrt(n_features); the predictions follow it
    assert errors[1] < errors[0] / 2 and errors[3] < errors[2] / 2, errors
    clf = NTKClassifier(diag_reg=1e-2, solver="features", n_features=4096).fit(Xtr, ytr)
    exact = NTKClassifier(diag_reg=1e-2).fit(Xtr, ytr)
    assert abs(clf.score(Xte, yte) - exact.score(Xte, yte)) <= 0.03
    with pytest.raises(ParameterError, match="need solver='direct'; this model was fitted with random features"):
        clf.predict_proba(Xte)
    with pytest.raises(ParameterError, match="solver='features' gives the converged network"):
        NTKRegressor(t=10.0, solver="features").fit(Xtr, ytr.astype(float))
    with pytest.raises(ParameterError, match="n_features must be an int >= 1"):
        NTKRegressor(solver="features", n_features=0).fit(Xtr, ytr.astype(float))


def test_features_solver_streams_chunks_to_the_same_ridge_solution(monkeypatch):
    # with D < N the fit accumulates Phi^T Phi over row chunks; against feature_ridge on all the
    # features at once (the same system, summed in one product)
    from sklearn.datasets import load_digits

    import widenet as wn
    from widenet import estimators

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1)
    Xtr, ytr, Xte = X[:500], y[:500].astype(float), X[500:600]
    monkeypatch.setattr(estimators, "_FEATURE_ROWS", 64)  # 8 chunks, the last one short
    model = NTKRegressor(diag_reg=1e-3, solver="features", n_features=64).fit(Xtr, ytr)
    net = model._architecture()
    phi, phi_test = (wn.features(net, torch.tensor(a), 64, seed=0) for a in (Xtr, Xte))
    assert phi.shape[1] == 2 * 64 + 1 < len(Xtr)
    full = wn.feature_ridge(phi, torch.tensor(ytr), phi_test, diag_reg=1e-3).numpy()
    np.testing.assert_allclose(model.predict(Xte), full, rtol=1e-9, atol=1e-9 * np.abs(full).max())
    from widenet.errors import ShapeError
    from widenet.predict.ridge import streamed_ridge_weights

    with pytest.raises(ShapeError, match="no training features"):
        streamed_ridge_weights("test", iter(()), 1e-3)


def test_falkon_solver_matches_direct_means_and_is_chosen_when_kernels_exceed_memory():
    from sklearn.datasets import load_digits

    from widenet.errors import ParameterError

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1)
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[300:500], y[300:500]
    # All centers: FALKON is exact kernel ridge regression, so it equals the direct solve.
    direct = NTKRegressor(diag_reg=1e-3, solver="direct").fit(Xtr, ytr.astype(float))
    falkon = NTKRegressor(diag_reg=1e-3, solver="falkon", n_centers=300).fit(Xtr, ytr.astype(float))
    assert falkon.solver_ == "falkon"
    np.testing.assert_allclose(falkon.predict(Xte), direct.predict(Xte), rtol=1e-5, atol=1e-6)
    nngp = NNGPRegressor(diag_reg=1e-3, solver="falkon", n_centers=300).fit(Xtr, ytr.astype(float))
    np.testing.assert_allclose(nngp.predict(Xte), NNGPRegressor(diag_reg=1e-3).fit(Xtr, ytr.astype(float)).predict(Xte),
                               rtol=1e-5, atol=1e-6)
    # "auto" with a budget smaller than the two 300 x 300 kernels takes FALKON with as many
    # centers as half the budget holds (here 150), and still classifies like the direct model.
    clf = NTKClassifier(diag_reg=1e-3, memory=2 * 8 * 300 * 150).fit(Xtr, ytr)
    assert clf.solver_ == "falkon" and len(clf.falkon_.centers) == 150
    exact = NTKClassifier(diag_reg=1e-3).fit(Xtr, ytr)
    assert exact.solver_ == "direct"
    assert abs(clf.score(Xte, yte) - exact.score(Xte, yte)) <= 0.03
    with pytest.raises(ParameterError, match="need solver='direct'"):
        clf.predict_proba(Xte)
    with pytest.raises(ParameterError, match="t=None"):
        NTKRegressor(t=10.0, solver="falkon").fit(Xtr, ytr.astype(float))
    with pytest.raises(ParameterError, match="solver must be"):
        NTKRegressor(solver="cg").fit(Xtr, ytr.astype(float))
