"""Every figure of widenet.theory: constrained layout, no text outside the figure (titles,
labels, legends), one legend entry per label (src/widenet/theory/_plot.py and the plot
methods that use it)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import widenet as wn  # noqa: E402
from widenet import theory  # noqa: E402

D = torch.float64
G = torch.Generator().manual_seed(0)
X = torch.randn(24, 6, dtype=D, generator=G)
Y = torch.sign(X[:, :1])


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1)).double()


def _spectrum():
    k = wn.Serial(wn.Dense(1), wn.Relu(), wn.Dense(1)).ntk(X)
    spec = theory.kernel_spectrum(k, Y)
    return spec.plot(fit=spec.fit_power_law(2, 12))


def _learning_curve():
    k = wn.Serial(wn.Dense(1), wn.Relu(), wn.Dense(1)).ntk(X)
    spec = theory.kernel_spectrum(k, Y)
    pred = theory.eigenlearning(spec, [4, 8, 12], ridge=1e-3)
    meas = theory.learning_curve(k, Y, [4, 8, 12], ridge=1e-3, trials=2)
    fig = meas.plot(prediction=pred, label="a")
    meas.plot(fig.axes[0], prediction=pred, label="a")  # the same series twice: one legend entry
    return fig


def _catapult():
    model = _mlp()
    th = theory.learning_rate_thresholds(model, X)
    fig = None
    for ratio in (1.0, 3.0):
        run = theory.catapult_probe(model, X, Y, ratio / th.lambda0, steps=20, curvature_every=5)
        fig = run.plot(None if fig is None else fig.axes)
    return fig


PLOTS = {
    "spectrum": _spectrum,
    "learning curve": _learning_curve,
    "phase diagram": lambda: theory.phase_diagram(wn.Tanh(), torch.linspace(0.5, 3, 5),
                                                  torch.linspace(0, 0.2, 3)).plot(),
    "depth profile": lambda: theory.depth_profile(wn.Serial(wn.Tanh(), wn.Dense(1)), X[:6], 8,
                                                  stem=wn.Dense(1)).plot(),
    "jacobian spectrum": lambda: theory.jacobian_spectrum(_mlp(), X[:3]).plot(),
    "catapult": _catapult,
    "learning-rate sweep": lambda: theory.learning_rate_sweep(_mlp(), X, Y, [1.0, 3.0, 6.0], steps=20,
                                                              refine=1).plot(label="mlp"),
    "hessian subspace": lambda: theory.hessian_subspace(_mlp(), F.mse_loss, X, Y, k=2, steps=6,
                                                        record=[0, 5]).plot(),
    "finite width": lambda: theory.finite_width_study(lambda n: wn.Serial(wn.Dense(n), wn.Relu(), wn.Dense(1)),
                                                      X[:8], Y[:8], X[8:12], widths=[8, 16, 32], steps=5,
                                                      seeds=1).plot(),
    "exact posterior": lambda: theory.exact_posterior(lambda n: wn.Serial(wn.Dense(n), wn.Erf(), wn.Dense(1)),
                                                      X[:2, :1], Y[:2], X[2:3, :1], widths=[1, 2, 4],
                                                      noise_var=0.5, samples=4000).plot(),
}


@pytest.mark.parametrize("name", PLOTS)
def test_the_figure_keeps_its_text_inside_and_labels_its_series_once(name):
    fig = PLOTS[name]()
    try:
        assert fig.get_layout_engine() is not None and type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        # What is drawn: each axes with its titles, labels, tick labels in view and legend,
        # and the figure's own texts.
        drawn = [(repr(ax.get_title()), ax.get_tightbbox(renderer)) for ax in fig.axes]
        drawn += [(repr(t.get_text()), t.get_window_extent(renderer)) for t in fig.texts if t.get_text()]
        for what, extent in drawn:
            assert (extent.x0 >= box.x0 - 1 and extent.y0 >= box.y0 - 1 and extent.x1 <= box.x1 + 1
                    and extent.y1 <= box.y1 + 1), f"{name}: {what} is clipped at {extent} (figure {box})"
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                labels = [t.get_text() for t in legend.get_texts()]
                assert len(labels) == len(set(labels)), f"{name}: repeated legend entries {labels}"
    finally:
        plt.close(fig)
