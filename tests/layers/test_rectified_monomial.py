"""Rectified monomials (src/widenet/layers/rectified_monomial.py)."""

import widenet as wn
from layers.contract import NonlinearityContract
from widenet.errors import ParameterError


class TestRectifiedMonomial(NonlinearityContract):
    layer_type = wn.RectifiedMonomial
    params = {"degree": 2}
    dual_oracle = "monte_carlo"
    bad = ((lambda: wn.RectifiedMonomial(-1), ParameterError,
            r"RectifiedMonomial: degree must be an integer >= 0 \(got -1\)"),)

    def mc_cases(self):
        return [({"degree": 0}, 200), ({"degree": 2}, 200)]

    def dual_cases(self):
        return [{"degree": n} for n in range(4)]
