"""widenet.predict side by side with Neural Tangents 0.6.5's ``neural_tangents.predict``.

Both sides get identical float64 inputs: the kernels are computed once by widenet (a
Dense-Relu-Dense network on random inputs) and handed to Neural Tangents as they are, so that
the comparisons test the predictions alone. Outputs share the kernel, which is Neural Tangents'
default ``trace_axes=(-1,)`` with targets of shape (N, k). The error measure is
``max |ours - NT| / max |NT|``.

Every Neural Tangents call of this file runs in one subprocess (module fixture ``nt``), since
each start costs seconds. Marked ``nt``: skipped unless the Neural Tangents environment
(shared tools/nt-env.sh) exists.
"""

import collections
import functools

import numpy as np
import pytest
import torch

import widenet as wn
import widenet.predict as P

pytestmark = pytest.mark.nt

TOL = 1e-10
# Neural Tangents integrates gradient_descent with jax.experimental.ode.odeint at its default
# tolerances rtol = atol = 1.4e-8 (predict.gradient_descent exposes no others); widenet's DOP853
# runs at rtol 1e-10, atol 1e-12. Agreement is bounded by Neural Tangents' local tolerance times
# the error growth over the integration (measured 1e-8 to 3e-8 here), so 1e-6 relative; the
# closed forms get TOL.
ODE_TOL = 1e-6

N, M, K = 10, 6, 3  # training points, test points, outputs
NET = wn.Serial(wn.Dense(512, 1.5, 0.1), wn.Relu(), wn.Dense(1, 1.5, 0.1))
ERF_NET = wn.Serial(wn.Dense(512, 1.5, 0.1), wn.Erf(), wn.Dense(1, 1.5, 0.1))
# (name, diag_reg, diag_reg_absolute_scale)
REGS = [("noreg", 0.0, False), ("relative", 1e-3, False), ("absolute", 0.05, True)]
T_ARRAY = np.array([[0.0, 1.0, 10.0], [100.0, 1000.0, np.inf]])  # steps, a 2-D array of times
ODE_CASES = [("mse", None), ("mse", 0.9), ("cross_entropy", None), ("cross_entropy", 0.9)]
ODE_TIMES = np.array([5.0, 0.0, 40.0, 1.0])  # widenet takes any order; Neural Tangents' sorted
MAX_LR_CASES = [("ntk", None, 0.0), ("ntk", N * K, 0.0), ("ntk", None, 0.9), ("nngp", N * K, 0.5)]
Pair = collections.namedtuple("Pair", "nngp ntk")  # a Kernel-like holder (variances, full matrices)


@functools.lru_cache(maxsize=None)
def _data():
    """Inputs, targets and widenet's kernels (computed on first use, not at collection)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N + M, 5, generator=g, dtype=torch.float64)
    y = torch.randn(N, K, generator=g, dtype=torch.float64)
    labels = torch.randint(0, K, (N,), generator=g)
    d = dict(x_train=x[:N], x_test=x[N:], y=y, onehot=torch.nn.functional.one_hot(labels, K).double(),
             f0=torch.randn(N, K, generator=g, dtype=torch.float64),
             g0=torch.randn(M, K, generator=g, dtype=torch.float64))
    # The blocks exactly as gradient_descent_mse_ensemble(NET, ...) computes them.
    d["kdd"], d["ktd"], d["ktt"] = NET.kernel(x[:N]), NET.kernel(x[N:], x[:N]), NET.kernel(x[N:])
    full = {}
    for name in ("nngp", "ntk"):
        dd, td, tt = (getattr(d[k], name) for k in ("kdd", "ktd", "ktt"))
        full[name] = torch.cat([torch.cat([dd, td.T], 1), torch.cat([td, tt], 1)], 0)
    d["full"] = Pair(**full)  # over the N + M points, for Neural Tangents' kernel_fn
    return d


def _rel(ours, theirs, scale=None):
    """``max |ours - theirs| / max |theirs|`` (or ``/ scale``), shapes equal."""
    ours = ours.numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != Neural Tangents' {theirs.shape}"
    scale = np.abs(theirs).max() if scale is None else scale
    diff = np.abs(ours - theirs).max()
    return float(diff / scale) if scale > 0 else float(diff)


def _check(what, ours, theirs, tol=TOL, scale=None):
    err = _rel(ours, theirs, scale)
    print(f"{what}: {err:.3g}")
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def _gaussian(what, ours, theirs, tol=TOL):
    _check(f"{what} mean", ours.mean, theirs[0], tol)
    _check(f"{what} covariance", ours.covariance, theirs[1], tol)


# ---------------------------------------------------------------------------------------------
# The Neural Tangents calls, all made by one process. Keys name the test case that reads them.


def _nt_calls():
    D = _data()
    kdd, ktd, ktt, y = D["kdd"], D["ktd"], D["ktt"], D["y"]
    calls = {}
    for reg_name, reg, absolute in REGS:
        args = dict(y_train=y, diag_reg=reg, diag_reg_absolute_scale=absolute)
        for get in ("nngp", "ntk", "ntkgp"):
            mat = "nngp" if get == "nngp" else "ntk"
            calls["gp", get, reg_name] = dict(fn="gp_inference", args=dict(k_train_train=kdd, **args), predict=[
                dict(get=get, k_test_train=ktd),
                dict(get=get, k_test_train=ktd, k_test_test=ktt),
                dict(get=get, k_test_train=None, k_test_test=True),  # train set: N(y, 0)
                dict(get=get, k_test_train=kdd, k_test_test=kdd),  # regularized train-set posterior
            ])
            # Plain matrices (no Kernel objects): the mean, and the covariance where one matrix is enough.
            calls["gp-matrix", get, reg_name] = dict(
                fn="gp_inference", args=dict(k_train_train=getattr(kdd, mat), **args),
                predict=[dict(get=get, k_test_train=getattr(ktd, mat))] + (
                    [] if get == "ntk" else
                    [dict(get=get, k_test_train=getattr(ktd, mat), k_test_test=getattr(ktt, mat))]))
        calls["mse", reg_name] = dict(
            fn="gradient_descent_mse", args=dict(k_train_train=kdd.ntk, learning_rate=0.7, **args), predict=[
                dict(t=t, fx_train_0=D["f0"], fx_test_0=D["g0"], k_test_train=ktd.ntk)
                for t in (2.5, T_ARRAY, None)
            ] + [
                dict(t=T_ARRAY, fx_train_0=D["f0"]),  # train outputs only
                dict(t=T_ARRAY, fx_train_0=0.0, fx_test_0=0.0, k_test_train=ktd.ntk),
                dict(t=None, fx_train_0=0.0, fx_test_0=0.0, k_test_train=ktd.ntk),
            ])
        for get in ("ntk", "nngp"):
            calls["ensemble", get, reg_name] = dict(
                fn="gradient_descent_mse_ensemble",
                args=dict(kernel_fn=D["full"], x_train=np.arange(N), learning_rate=0.5, **args),
                # compute_cov=True first: Neural Tangents 0.6.5 caches its t=None predictor with
                # the training kernels fetched so far, so a get="ntk" mean-only call first would
                # leave it without the NNGP that later covariances need (TypeError on None).
                predict=[dict(t=t, x_test=x_test, get=get, compute_cov=cov)
                         for t in (None, 3.0, T_ARRAY) for x_test in (np.arange(N, N + M), None)
                         for cov in (True, False)])
    # One-output targets: widenet takes y of shape (N,), Neural Tangents (N, 1).
    y1 = y[:, :1]
    calls["gp-1d"] = dict(fn="gp_inference", args=dict(k_train_train=kdd, y_train=y1, diag_reg=1e-3),
                          predict=[dict(get=g, k_test_train=ktd, k_test_test=ktt) for g in ("nngp", "ntk")])
    calls["mse-1d"] = dict(fn="gradient_descent_mse", args=dict(k_train_train=kdd.ntk, y_train=y1), predict=[
        dict(t=t, fx_train_0=D["f0"][:, :1], fx_test_0=D["g0"][:, :1], k_test_train=ktd.ntk)
        for t in (T_ARRAY, None)])
    calls["ensemble-1d"] = dict(
        fn="gradient_descent_mse_ensemble", args=dict(kernel_fn=D["full"], x_train=np.arange(N), y_train=y1),
        predict=[dict(t=t, x_test=x_test, get=get, compute_cov=True) for t in (T_ARRAY, None)
                 for x_test in (np.arange(N, N + M), None) for get in ("ntk", "nngp")])
    # Neural Tangents' own kernel_fn of an architecture (inputs, not indices), end to end.
    calls["ensemble-stax"] = dict(
        fn="gradient_descent_mse_ensemble",
        args=dict(kernel_fn=ERF_NET, x_train=D["x_train"], y_train=y, learning_rate=0.5, diag_reg=1e-3),
        predict=[dict(t=t, x_test=x_test, get=get, compute_cov=True) for get in ("ntk", "nngp")
                 for t in (None, 3.0, T_ARRAY) for x_test in (D["x_test"], None)])
    for loss, momentum in ODE_CASES:
        calls["ode", loss, momentum] = dict(
            fn="gradient_descent",
            args=dict(loss=loss, k_train_train=kdd.ntk, y_train=D["onehot"] if loss == "cross_entropy" else y,
                      learning_rate=0.5, momentum=momentum),
            predict=[dict(t=np.sort(ODE_TIMES), fx_train_or_state_0=f0, fx_test_0=g0, k_test_train=ktd.ntk)
                     for f0, g0 in ((D["f0"], D["g0"]), (0.0, 0.0))])
    # The closed form of the MSE ODE without momentum, to tell the two solvers' errors apart.
    calls["ode-exact"] = dict(
        fn="gradient_descent_mse", args=dict(k_train_train=kdd.ntk, y_train=y, learning_rate=0.5),
        predict=[dict(t=np.sort(ODE_TIMES), fx_train_0=D["f0"], fx_test_0=D["g0"], k_test_train=ktd.ntk)])
    for i, (which, size, momentum) in enumerate(MAX_LR_CASES):
        calls["max_lr", i] = dict(fn="max_learning_rate", args=dict(
            ntk_train_train=getattr(kdd, which), y_train_size=size, momentum=momentum))
    return calls


@pytest.fixture(scope="module")
def nt():
    from nt import nt_predict

    calls = _nt_calls()
    return dict(zip(calls, nt_predict(list(calls.values()))))


# ---------------------------------------------------------------------------------------------
# gp_inference


@pytest.mark.parametrize("reg_name,reg,absolute", REGS, ids=[r[0] for r in REGS])
@pytest.mark.parametrize("get", ["nngp", "ntk", "ntkgp"])
def test_gp_inference(nt, get, reg_name, reg, absolute):
    D = _data()
    kdd, ktd, ktt = D["kdd"], D["ktd"], D["ktt"]
    theirs = nt["gp", get, reg_name]
    predict = P.gp_inference(kdd, D["y"], reg, diag_reg_absolute_scale=absolute, get=get)
    what = f"gp_inference[{get}, {reg_name}]"
    _check(f"{what} test mean", predict(ktd), theirs[0])
    _gaussian(f"{what} test", predict(ktd, ktt), theirs[1])
    _gaussian(f"{what} train set", predict(None, kdd), theirs[2])
    # Regularized train-set posterior: its covariance is a difference of terms of the size of
    # the prior covariance that cancel down to O(diag_reg) (O(diag_reg^2) for "ntk", exactly 0
    # without diag_reg). Both libraries evaluate the same cancelling formula in a different
    # order, so they differ by rounding of the prior's size, not of the result's: measured
    # against max |NT| that reads 1.5 (noreg, both are rounding noise around 0) and 1.07e-10
    # ("ntk", relative: result 3.3e-5, prior 11.4). Against the cancellation-free form
    # r^2 (Theta + r)^-1 K (Theta + r)^-1, widenet is off by 3.9e-11 and NT by 1.07e-10 of
    # the result. The covariance is therefore measured against the prior's scale.
    ours = predict(kdd, kdd)
    prior = np.abs((kdd.ntk if get == "ntkgp" else kdd.nngp).numpy()).max()
    _check(f"{what} regularized train set mean", ours.mean, theirs[3][0])
    _check(f"{what} regularized train set covariance (/ max prior)", ours.covariance, theirs[3][1],
           scale=prior)
    # Variances only (k_test_test's diagonal): Neural Tangents has no such mode; its full
    # covariance's diagonal.
    diag = Pair(ktt.nngp.diagonal(), ktt.ntk.diagonal())
    ours = predict(ktd, diag)
    _check(f"{what} variance mean", ours.mean, theirs[1][0])
    _check(f"{what} variance", ours.covariance, np.diagonal(theirs[1][1]))

    mat = "nngp" if get == "nngp" else "ntk"
    theirs = nt["gp-matrix", get, reg_name]
    predict = P.gp_inference(getattr(kdd, mat), D["y"], reg, diag_reg_absolute_scale=absolute, get=get)
    _check(f"{what} matrices test mean", predict(getattr(ktd, mat)), theirs[0])
    if get != "ntk":
        _gaussian(f"{what} matrices test", predict(getattr(ktd, mat), getattr(ktt, mat)), theirs[1])


def test_gp_inference_one_output(nt):
    D = _data()
    for get, theirs in zip(("nngp", "ntk"), nt["gp-1d"]):
        ours = P.gp_inference(D["kdd"], D["y"][:, 0], 1e-3, get=get)(D["ktd"], D["ktt"])
        _check(f"gp_inference[{get}, 1-D y] mean", ours.mean, theirs[0][:, 0])
        _check(f"gp_inference[{get}, 1-D y] covariance", ours.covariance, theirs[1])


# ---------------------------------------------------------------------------------------------
# gradient_descent_mse


@pytest.mark.parametrize("reg_name,reg,absolute", REGS, ids=[r[0] for r in REGS])
def test_gradient_descent_mse(nt, reg_name, reg, absolute):
    D = _data()
    kdd, ktd, f0, g0 = D["kdd"], D["ktd"], D["f0"], D["g0"]
    theirs = iter(nt["mse", reg_name])
    predict = P.gradient_descent_mse(kdd.ntk, D["y"], 0.7, reg, diag_reg_absolute_scale=absolute)
    what = f"gradient_descent_mse[{reg_name}]"
    for t in (2.5, T_ARRAY, None):
        train, test = predict(t, ktd.ntk, f0, g0)
        nt_train, nt_test = next(theirs)
        _check(f"{what} t={t if t is None or np.isscalar(t) else 'array'} train", train, nt_train)
        _check(f"{what} t={t if t is None or np.isscalar(t) else 'array'} test", test, nt_test)
    _check(f"{what} t=array train only", predict(T_ARRAY, None, f0), next(theirs))
    for t in (T_ARRAY, None):
        train, test = predict(t, ktd.ntk)
        nt_train, nt_test = next(theirs)
        _check(f"{what} t={'array' if t is not None else t} f0=0 train", train, nt_train)
        _check(f"{what} t={'array' if t is not None else t} f0=0 test", test, nt_test)


def test_gradient_descent_mse_one_output(nt):
    D = _data()
    predict = P.gradient_descent_mse(D["kdd"].ntk, D["y"][:, 0])
    for t, (nt_train, nt_test) in zip((T_ARRAY, None), nt["mse-1d"]):
        train, test = predict(t, D["ktd"].ntk, D["f0"][:, 0], D["g0"][:, 0])
        _check(f"gradient_descent_mse[1-D y] t={t if t is None else 'array'} train", train, nt_train[..., 0])
        _check(f"gradient_descent_mse[1-D y] t={t if t is None else 'array'} test", test, nt_test[..., 0])


# ---------------------------------------------------------------------------------------------
# gradient_descent (ODE)


def _torch_loss(name):
    if name == "mse":
        return lambda f, y: ((f - y) ** 2).sum() / (2 * y.numel())
    return lambda f, y: -(torch.log_softmax(f, -1) * y).mean()


@pytest.mark.parametrize("loss,momentum", ODE_CASES, ids=[f"{a}-momentum{b}" for a, b in ODE_CASES])
def test_gradient_descent(nt, loss, momentum):
    D = _data()
    y = D["onehot"] if loss == "cross_entropy" else D["y"]
    predict = P.gradient_descent(_torch_loss(loss), D["kdd"].ntk, y, 0.5, momentum)
    order = np.argsort(ODE_TIMES)  # ours[order] are at Neural Tangents' (sorted) times
    what = f"gradient_descent[{loss}, momentum={momentum}]"
    for init, (nt_train, nt_test) in zip(((D["f0"], D["g0"]), (0.0, 0.0)), nt["ode", loss, momentum]):
        train, test = predict(ODE_TIMES, D["ktd"].ntk, *init)
        label = "f0!=0" if isinstance(init[0], torch.Tensor) else "f0=0"
        _check(f"{what} {label} train", train[order], nt_train, ODE_TOL)
        _check(f"{what} {label} test", test[order], nt_test, ODE_TOL)
    if loss == "mse" and momentum is None:
        # Against Neural Tangents' closed form (gradient_descent_mse) the gap is widenet's own
        # solver error, at its rtol 1e-10 / atol 1e-12 (measured 8e-12; NT's odeint: 1e-8).
        train, test = predict(ODE_TIMES, D["ktd"].ntk, D["f0"], D["g0"])
        nt_train, nt_test = nt["ode-exact"][0]
        _check(f"{what} train vs NT closed form", train[order], nt_train, 1e-9)
        _check(f"{what} test vs NT closed form", test[order], nt_test, 1e-9)


# ---------------------------------------------------------------------------------------------
# gradient_descent_mse_ensemble


@pytest.mark.parametrize("reg_name,reg,absolute", REGS, ids=[r[0] for r in REGS])
@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_gradient_descent_mse_ensemble(nt, get, reg_name, reg, absolute):
    D = _data()
    # widenet computes the kernels of NET itself; Neural Tangents gets the same blocks through
    # an indexed kernel_fn (nt_predict), so that only the predictions are compared.
    predict = P.gradient_descent_mse_ensemble(NET, D["x_train"], D["y"], 0.5, reg,
                                              diag_reg_absolute_scale=absolute)
    theirs = iter(nt["ensemble", get, reg_name])
    for t in (None, 3.0, T_ARRAY):
        for x_test in (D["x_test"], None):
            what = (f"ensemble[{get}, {reg_name}] t={t if t is None or np.isscalar(t) else 'array'} "
                    f"{'test' if x_test is not None else 'train'}")
            nt_gaussian, nt_mean = next(theirs), next(theirs)
            _check(f"{what} mean", predict(t, x_test, get), nt_mean)
            _gaussian(what, predict(t, x_test, get, compute_cov=True), nt_gaussian)
            # Variances only: the diagonal of Neural Tangents' covariance.
            ours = predict(t, x_test, get, compute_cov="variance")
            _check(f"{what} variance mean", ours.mean, nt_gaussian[0])
            _check(f"{what} variance", ours.covariance, np.diagonal(nt_gaussian[1], axis1=-2, axis2=-1))


def _ensemble_one_output(nt, infinite_test):
    D = _data()
    predict = P.gradient_descent_mse_ensemble(NET, D["x_train"], D["y"][:, 0])
    theirs = iter(nt["ensemble-1d"])
    for t in (T_ARRAY, None):
        for x_test in (D["x_test"], None):
            for get in ("ntk", "nngp"):
                nt_mean, nt_cov = next(theirs)
                if (t is None and x_test is not None) != infinite_test:
                    continue
                what = (f"ensemble[1-D y, {get}] t={t if t is None else 'array'} "
                        f"{'test' if x_test is not None else 'train'}")
                ours = predict(t, x_test, get, compute_cov=True)
                _check(f"{what} mean", ours.mean, nt_mean[..., 0])
                _check(f"{what} covariance", ours.covariance, nt_cov)
                _check(f"{what} mean only", predict(t, x_test, get), nt_mean[..., 0])
                ours = predict(t, x_test, get, compute_cov="variance")
                _check(f"{what} variance mean", ours.mean, nt_mean[..., 0])
                _check(f"{what} variance", ours.covariance, np.diagonal(nt_cov, axis1=-2, axis2=-1))


def test_gradient_descent_mse_ensemble_one_output(nt):
    _ensemble_one_output(nt, infinite_test=False)


def test_gradient_descent_mse_ensemble_one_output_infinite_time_test_set(nt):
    # With y of shape (N,), t=None and x_test given, widenet returns means of shape (M, 1)
    # instead of (M,) (values agree with NT to 3e-16): _predict hands gp_inference the
    # already 2-D targets and then adds the output axis once more.
    _ensemble_one_output(nt, infinite_test=True)


def test_gradient_descent_mse_ensemble_neural_tangents_kernel_fn(nt):
    # End to end: widenet's kernels of ERF_NET against Neural Tangents' own stax kernel_fn of
    # the same architecture (nt_predict translates it like nt_kernel). Erf, not Relu: on
    # identical inputs Neural Tangents computes the Relu NTK's diagonal through
    # sqrt(q1 q2 - K^2) of a rounding residue and is off there by 1.0e-9 relative (see
    # tests/test_neural_tangents.py), which reaches these predictions as up to 3e-9; Erf's
    # kernels agree to rounding everywhere.
    D = _data()
    predict = P.gradient_descent_mse_ensemble(ERF_NET, D["x_train"], D["y"], 0.5, 1e-3)
    theirs = iter(nt["ensemble-stax"])
    for get in ("ntk", "nngp"):
        for t in (None, 3.0, T_ARRAY):
            for x_test in (D["x_test"], None):
                what = (f"ensemble[stax Erf, {get}] t={t if t is None or np.isscalar(t) else 'array'} "
                        f"{'test' if x_test is not None else 'train'}")
                _gaussian(what, predict(t, x_test, get, compute_cov=True), next(theirs))


# ---------------------------------------------------------------------------------------------
# max_learning_rate


@pytest.mark.parametrize("case", range(len(MAX_LR_CASES)), ids=[str(c) for c in MAX_LR_CASES])
def test_max_learning_rate(nt, case):
    D = _data()
    which, size, momentum = MAX_LR_CASES[case]
    ours = P.max_learning_rate(getattr(D["kdd"], which), size, momentum)
    _check(f"max_learning_rate{MAX_LR_CASES[case]}", ours, nt["max_lr", case])
