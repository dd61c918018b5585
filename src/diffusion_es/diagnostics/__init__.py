"""Exposure-bias diagnostics (:mod:`.measure`) and automatic choice of λ (:mod:`.calibrate`), on any denoiser."""

from .calibrate import CalibrationResult, calibrate, paired_gain
from .measure import ExposureCurves, estimate_lambda, measure_exposure, plot_exposure, training_eps_norms

__all__ = ["calibrate", "CalibrationResult", "paired_gain", "measure_exposure", "ExposureCurves",
           "estimate_lambda", "plot_exposure", "training_eps_norms"]
