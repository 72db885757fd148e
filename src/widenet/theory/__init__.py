"""The questions wide-network theory asks, answered for widenet architectures.

Signal propagation (Poole et al. 2016; Schoenholz et al. 2017): ``length_map``,
``correlation_map``, their fixed points ``fixed_point_q`` and ``fixed_point_c``,
``signal_propagation`` (``chi1``, depth scales ``xi_q``, ``xi_c``), ``critical_line``
and ``phase_diagram``, for any widenet nonlinearity; ``depth_profile`` for any deep
widenet architecture (how its NNGP and NTK degenerate with depth, Xiao et al. 2020).

Spectra and learning curves: ``kernel_spectrum`` on a data pool, ``fit_power_law`` of
its decay (and the data-scaling exponent of Bahri et al. 2021), ``eigenlearning``
predictions of kernel regression's test and train error (Bordelon et al. 2020; Canatar et al.
2021; Simon et al. 2021), ``kare`` (Jacot et al. 2020), and ``learning_curve`` to
measure what they predict.

Dynamical isometry: ``jacobian_spectrum`` of any model (with ``net.module(init=
"orthogonal" | "delta_orthogonal")`` for finite twins) against ``jacobian_moments``
(Pennington et al. 2017); ``jacobian_norm``, each example's sensitivity (Novak et al. 2018).

Training dynamics: ``ntk_eigenpairs`` and ``hessian_eigenpairs`` of any model,
matrix-free (Lanczos over NTK- and Hessian-vector products); learning-rate phases
(Lewkowycz et al. 2020): ``learning_rate_thresholds``, ``catapult_probe`` and
``learning_rate_sweep``; ``hessian_subspace`` (Gur-Ari et al. 2018), the gradient's
fraction in the top Hessian subspace during training; ``finite_width_study``, finite
networks against their linearization and their infinite-width limit as the width grows (Lee et
al. 2019; Golubeva et al. 2020); ``exact_posterior``, rejection-sampled posteriors of
finite Bayesian networks against the NNGP posterior (Hron et al. 2020).

Large but finite width: ``finite_width``, the 1/n corrections of perturbation theory for deep
MLPs (Roberts, Yaida & Hanin 2021): the output's two-point correction and connected
four-point function, the NTK's mean shift, variance and correlation with the outputs, the
dNTK and the two ddNTKs, the NTK's expected move in the first step of training, and the
mean prediction of a width-n network trained by gradient descent (``trained_mean``);
``finite_width_samples`` and ``finite_width_training``, the finite networks that check them.
"""

from ._signal import (DepthProfile, PhaseDiagram, SignalPropagation, correlation_map, critical_line, depth_profile,
                      dual, fixed_point_c, fixed_point_q, length_map, phase_diagram, signal_propagation)
from ._jacobian import JacobianMoments, JacobianSpectrum, jacobian_moments, jacobian_norm, jacobian_spectrum
from ._eigen import Eigenpairs, hessian_eigenpairs, ntk_eigenpairs, subspace_overlap
from ._phases import (CatapultRun, LearningRateSweep, LearningRateThresholds, catapult_probe, learning_rate_sweep,
                      learning_rate_thresholds)
from ._posterior import PosteriorStudy, exact_posterior, wasserstein_to_gaussian
from ._subspace import HessianSubspace, hessian_subspace
from ._width import WidthStudy, finite_width_study
from ._finite_width import FiniteWidth, finite_width
from ._fw_samples import FiniteWidthSamples, FiniteWidthTraining, finite_width_samples, finite_width_training
from ._spectra import KernelSpectrum, PowerLawFit, fit_power_law, kernel_spectrum
from ._learning import LearningCurve, LearningCurvePrediction, eigenlearning, kare, learning_curve

__all__ = ["dual", "length_map", "correlation_map", "fixed_point_q", "fixed_point_c", "signal_propagation",
           "SignalPropagation", "critical_line", "phase_diagram", "PhaseDiagram", "depth_profile", "DepthProfile",
           "kernel_spectrum", "KernelSpectrum", "fit_power_law", "PowerLawFit", "eigenlearning",
           "LearningCurvePrediction", "kare", "learning_curve", "LearningCurve",
           "jacobian_spectrum", "JacobianSpectrum", "jacobian_moments", "JacobianMoments", "jacobian_norm",
           "ntk_eigenpairs", "hessian_eigenpairs", "Eigenpairs", "subspace_overlap",
           "learning_rate_thresholds", "LearningRateThresholds", "catapult_probe", "CatapultRun",
           "learning_rate_sweep", "LearningRateSweep", "hessian_subspace", "HessianSubspace",
           "finite_width_study", "WidthStudy", "finite_width", "FiniteWidth",
           "finite_width_samples", "FiniteWidthSamples", "finite_width_training", "FiniteWidthTraining",
           "exact_posterior", "PosteriorStudy", "wasserstein_to_gaussian"]
