"""The questions wide-network theory asks, answered for widenet architectures.

Signal propagation (Poole et al. 2016; Schoenholz et al. 2017): :func:`length_map`,
:func:`correlation_map`, their fixed points :func:`fixed_point_q` and :func:`fixed_point_c`,
:func:`signal_propagation` (``chi1``, depth scales ``xi_q``, ``xi_c``), :func:`critical_line`
and :func:`phase_diagram`, for any widenet nonlinearity; :func:`depth_profile` for any deep
widenet architecture (how its NNGP and NTK degenerate with depth, Xiao et al. 2020).

Spectra and learning curves: :func:`kernel_spectrum` on a data pool, :func:`fit_power_law` of
its decay (and the data-scaling exponent of Bahri et al. 2021), :func:`eigenlearning`
predictions of kernel regression's test and train error (Bordelon et al. 2020; Canatar et al.
2021; Simon et al. 2021), :func:`kare` (Jacot et al. 2020), and :func:`learning_curve` to
measure what they predict.

Dynamical isometry: :func:`jacobian_spectrum` of any model (with ``net.module(init=
"orthogonal" | "delta_orthogonal")`` for finite twins) against :func:`jacobian_moments`
(Pennington et al. 2017).
"""

from ._signal import (DepthProfile, PhaseDiagram, SignalPropagation, correlation_map, critical_line, depth_profile,
                      dual, fixed_point_c, fixed_point_q, length_map, phase_diagram, signal_propagation)
from ._jacobian import JacobianMoments, JacobianSpectrum, jacobian_moments, jacobian_spectrum
from ._spectra import (KernelSpectrum, LearningCurve, LearningCurvePrediction, PowerLawFit, eigenlearning,
                       fit_power_law, kare, kernel_spectrum, learning_curve)

__all__ = ["dual", "length_map", "correlation_map", "fixed_point_q", "fixed_point_c", "signal_propagation",
           "SignalPropagation", "critical_line", "phase_diagram", "PhaseDiagram", "depth_profile", "DepthProfile",
           "kernel_spectrum", "KernelSpectrum", "fit_power_law", "PowerLawFit", "eigenlearning",
           "LearningCurvePrediction", "kare", "learning_curve", "LearningCurve",
           "jacobian_spectrum", "JacobianSpectrum", "jacobian_moments", "JacobianMoments"]
