"""Core mathematics, torch only: schedules (discrete and continuous time), the forward process, the
posterior, the prediction targets and their conversions, losses, ELBO terms, Gaussian facts, Monte Carlo helpers.

Nothing here knows a network, a data set, a device or a plot; each function works on tensors of any
batch shape and cites its chapter's equation label and the paper's equation.
"""

from __future__ import annotations

from .schedules import (Schedule, linear_schedule, cosine_schedule, sigmoid_schedule, gather, gather64)
from .forward import (q_mean_var, q_sample, q_step_sample)
from .posterior import (posterior_mean_coefs, posterior_mean, posterior_variance)
from .targets import (Target, TARGETS, get_target, score_from_x0, x0_from_score, x0_from_eps, eps_from_x0, v_from_x0_eps, x0_from_v, eps_from_v, score_from_eps, eps_from_score, x0_eps_from_output, target_from_x0_eps)
from .variance import (log_variance_bounds, learned_log_variance, split_output)
from .losses import (simple_loss, vlb_weight, vlb_loss, hybrid_loss, HYBRID_LAMBDA, LOSSES)
from .likelihood import (prior_kl, denoising_kl, decoder_nll, BIN_WIDTH, check_on_pixel_grid, bits_per_dim)
from .gaussian import (gaussian_kl, expected_gaussian_log_prob, as_float64, check_variance)
from .vdm import (LinearGaussianReverse, optimal_linear_reverse, forward_trajectory_moments, sample_forward_trajectory, bridge_coefs, bridge_mean_var, conditional_mutual_information, log_q_step, log_q_marginal, log_q_posterior, VDMTerms, vdm_elbo_exact, vdm_log_evidence, vdm_terms_denoising, vdm_terms_consistency, vdm_terms_consistency_as_printed, vdm_elbo_estimates, ESTIMATORS)
from .learned_schedule import (alpha_bar_from_gamma, snr_from_gamma, schedule_from_gamma, continuous_vlb_integrand)
from .montecarlo import (mean_and_stderr, within_clt)
from .score_matching import (conditional_score, explicit_score_matching_loss, implicit_score_matching_loss, dsm_loss)
from .sde import (vp_drift, vp_diffusion_squared, ve_sigma, ve_diffusion_squared, reverse_drift, probability_flow_drift, vp_reverse_drift, vp_probability_flow_drift)

__all__ = ['Schedule', 'linear_schedule', 'cosine_schedule', 'sigmoid_schedule', 'gather', 'gather64', 'q_mean_var', 'q_sample', 'q_step_sample', 'posterior_mean_coefs', 'posterior_mean', 'posterior_variance', 'Target', 'TARGETS', 'get_target', 'score_from_x0', 'x0_from_score', 'x0_from_eps', 'eps_from_x0', 'v_from_x0_eps', 'x0_from_v', 'eps_from_v', 'score_from_eps', 'eps_from_score', 'x0_eps_from_output', 'target_from_x0_eps', 'log_variance_bounds', 'learned_log_variance', 'split_output', 'simple_loss', 'vlb_weight', 'vlb_loss', 'hybrid_loss', 'HYBRID_LAMBDA', 'LOSSES', 'prior_kl', 'denoising_kl', 'decoder_nll', 'BIN_WIDTH', 'check_on_pixel_grid', 'bits_per_dim', 'gaussian_kl', 'expected_gaussian_log_prob', 'as_float64', 'check_variance', 'LinearGaussianReverse', 'optimal_linear_reverse', 'forward_trajectory_moments', 'sample_forward_trajectory', 'bridge_coefs', 'bridge_mean_var', 'conditional_mutual_information', 'log_q_step', 'log_q_marginal', 'log_q_posterior', 'VDMTerms', 'vdm_elbo_exact', 'vdm_log_evidence', 'vdm_terms_denoising', 'vdm_terms_consistency', 'vdm_terms_consistency_as_printed', 'vdm_elbo_estimates', 'ESTIMATORS', 'alpha_bar_from_gamma', 'snr_from_gamma', 'schedule_from_gamma', 'continuous_vlb_integrand', 'mean_and_stderr', 'within_clt', 'conditional_score', 'explicit_score_matching_loss', 'implicit_score_matching_loss', 'dsm_loss', 'vp_drift', 'vp_diffusion_squared', 've_sigma', 've_diffusion_squared', 'reverse_drift', 'probability_flow_drift', 'vp_reverse_drift', 'vp_probability_flow_drift']
