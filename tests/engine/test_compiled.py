"""Compiled kernel rules (``wn.set_compile``): the same kernels as the eager rules.

The oracle is the eager path, which every other test checks against Monte Carlo, closed
forms and Neural Tangents. Compiled and eager evaluate the same formulas in another order of
rounding, so they agree to a few units in the last place, not bitwise.
"""

import subprocess
import sys

import pytest
import torch

import widenet as wn
from widenet._engine import compiled as _compiled
from widenet.errors import ParameterError

RULES = [wn.Relu(), wn.LeakyRelu(0.2), wn.Abs(), wn.ABRelu(-0.5, 1.5), wn.Erf(), wn.SigmoidLike(),
         wn.Erf(a=1.5, b=0.7, c=0.2)]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _both(net, *args, **kwargs):
    eager = net.kernel(*args, **kwargs)
    with wn.set_compile(True):
        compiled = net.kernel(*args, **kwargs)
    return eager, compiled


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_compiled_rules_match_eager_ones_on_fully_connected_networks(rule):
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[3] = 0  # a zero-variance input: the rules' special case for it
    net = wn.Serial(wn.Dense(8, 1.3, 0.0), rule, wn.Dense(8, 1.1, 0.0), rule, wn.Dense(1))
    eager, compiled = _both(net, x[:4], x[4:])
    assert _rel(compiled.nngp, eager.nngp) < 1e-14
    assert _rel(compiled.ntk, eager.ntk) < 1e-14
    assert torch.isfinite(compiled.ntk).all()


@pytest.mark.parametrize("head", ["pool", "flatten"])
def test_compiled_rules_match_eager_ones_on_convolutional_networks(head):
    # Pooling needs the full layout (grid and own-covariance tiles); Flatten the diagonal one.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 5, 4, dtype=torch.float64, generator=g)
    last = wn.GlobalAvgPool() if head == "pool" else wn.Flatten()
    net = wn.Serial(wn.Conv(4, 3, W_std=1.4, b_std=0.1), wn.Relu(), wn.Conv(4, 2, padding="valid"),
                    wn.Erf(), last, wn.Dense(1))
    eager, compiled = _both(net, x)
    assert _rel(compiled.nngp, eager.nngp) < 1e-14
    assert _rel(compiled.ntk, eager.ntk) < 1e-14
    only_nngp = net.nngp(x[:2], x[2:])
    with wn.set_compile(True):
        assert _rel(net.nngp(x[:2], x[2:]), only_nngp) < 1e-14  # no NTK tile to carry


def test_compiled_rules_in_float32_stay_within_float32_rounding_of_float64():
    x = torch.randn(6, 1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    net = wn.Serial(wn.Conv(4, 3, W_std=1.4, b_std=0.1), wn.Relu(), wn.Conv(4, 3), wn.Erf(),
                    wn.GlobalAvgPool(), wn.Dense(1))
    exact = net.kernel(x)
    with wn.set_compile(True):
        single = net.kernel(x.float())
    assert single.ntk.dtype == torch.float32
    assert _rel(single.nngp.double(), exact.nngp) < 1e-5
    assert _rel(single.ntk.double(), exact.ntk) < 1e-5


def test_compiled_rules_really_run_compiled():
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    net = wn.Serial(wn.Dense(3), wn.Relu(), wn.Dense(1))
    seen = []
    real = torch.compile

    def spy(fn, **kwargs):
        compiled = real(fn, **kwargs)

        assert kwargs["fullgraph"] is True

        def counted(*args):
            seen.append(fn.__name__)
            return compiled(*args)
        return counted

    saved = dict(_compiled._compiled)
    _compiled._compiled.clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "compile", spy)
            with wn.set_compile(True), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                net.kernel(x)
            net.kernel(x)  # off again: nothing more goes through the compiled rule
    finally:
        _compiled._compiled.clear()
        _compiled._compiled.update(saved)
    # fullgraph=True and fail_on_recompile_limit_hit: a rule that dynamo could not compile
    # whole, or one it would have run uncompiled past its recompile limit, raises instead.
    assert len(seen) >= 1 and set(seen) == {"_abrelu_rule"}


def test_tiles_of_a_compiled_call_equal_the_untiled_result_exactly():
    x = torch.randn(11, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    net = wn.Serial(wn.Conv(2, 3, W_std=1.5, b_std=0.2), wn.Relu(), wn.Conv(2, 3), wn.Relu(),
                    wn.GlobalAvgPool(), wn.Dense(1))
    with wn.set_compile(True):
        whole = net.kernel(x, block_size=11)
        tiled = net.kernel(x, block_size=3)  # tiles of 3 inputs: 11 divides into none
        cross = net.kernel(x[:5], x[5:], block_size=2)
    assert torch.equal(tiled.nngp, whole.nngp) and torch.equal(tiled.ntk, whole.ntk)
    assert torch.equal(cross.ntk, whole.ntk[:5, 5:])


def test_derivatives_run_eagerly_and_are_unchanged():
    # Hyperparameter gradients and forward-mode tangents cannot go through the compiled rules:
    # those calls run the eager ones, with the same numbers.
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def ntk_sum(a):
        net = wn.Serial(wn.Dense(4, 1.2), wn.LeakyRelu(a), wn.Dense(1))
        return net.kernel(x).ntk.sum()

    a = torch.tensor(0.3, dtype=torch.float64)
    eager = torch.func.jacfwd(ntk_sum)(a)
    with wn.set_compile(True):
        compiled = torch.func.jacfwd(ntk_sum)(a)
    assert torch.equal(compiled, eager)


def test_set_compile_is_a_switch_and_a_context_manager():
    assert wn.compile_enabled() is False
    with wn.set_compile(True):
        assert wn.compile_enabled() is True
        with wn.set_compile(False):
            assert wn.compile_enabled() is False
        assert wn.compile_enabled() is True
    assert wn.compile_enabled() is False
    previous = wn.set_compile(True)
    try:
        assert wn.compile_enabled() is True and repr(previous) == "set_compile(True)"
    finally:
        wn.set_compile(False)
    with pytest.raises(ParameterError, match=r"set_compile: enabled must be True or False \(got 1\)"):
        wn.set_compile(1)
    assert wn.compile_enabled() is False


@pytest.mark.parametrize("variable, probe, default", [
    ("WIDENET_COMPILE", "wn.compile_enabled()", False),
    ("WIDENET_FUSED", "__import__('widenet._engine.fused', fromlist=['_'])._ENABLED", True),
])
@pytest.mark.parametrize("value, expected", [("1", True), ("on", True), ("0", False), ("off", False),
                                             ("", None), ("2", "must be 0 or 1")])
def test_the_environment_variables_set_the_initial_value(variable, probe, default, value, expected):
    code = f"import widenet as wn; print({probe})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={variable: value, "PATH": ""})
    if expected is None or isinstance(expected, bool):
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(default if expected is None else expected)
    else:
        assert done.returncode != 0
        assert f"{variable} {expected}" in done.stderr and "'2'" in done.stderr
