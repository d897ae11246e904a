"""Sampling: denoisers and their wrappers, the steps of each sampler, the one shared loop, and drawing images.

A step gets the denoiser and the generator (``step(denoiser, x, t, t_prev, schedule, generator, state)
-> (x_prev, state)``), so Heun, predictor-corrector and guided steps are ordinary steps of :func:`iterate`.
"""

from __future__ import annotations

from .denoisers import (Denoiser, ScoreFn, model_denoiser, clip_denoiser, score_from_denoiser, denoiser_from_score,
                        schedule_of, check_schedule)
from .steps import (standard_normal, ddpm_update, ddim_update, dpm_solver_2m_update, ddpm_step, ddim_step, dpm_solver_2m_step, heun_step,
                    euler_maruyama_update, reverse_diffusion_update, snr_step_size, euler_maruyama_step, pc_step, PREDICTORS)
from .loop import (Step, SamplerState, iterate, sample, count_nfe, ddim_timesteps, SAMPLERS, PC_DEFAULTS, sampler_plan)
from .images import (generate_images)
from .guidance import (GUIDANCE_CONVENTIONS, convert_guidance, classifier_free_guidance, classifier_guidance,
                       classifier_log_likelihood_grad)
from .guided import (classifier_free_denoiser, classifier_guided_denoiser, check_class_labels)
from .langevin import (langevin_update)
from .annealed import (langevin_chain, annealed_langevin, swap_neighbours, replica_exchange_langevin)

__all__ = ['Denoiser', 'ScoreFn', 'model_denoiser', 'clip_denoiser', 'score_from_denoiser', 'denoiser_from_score', 'schedule_of', 'check_schedule', 'standard_normal', 'ddpm_update', 'ddim_update', 'dpm_solver_2m_update', 'ddpm_step', 'ddim_step', 'dpm_solver_2m_step', 'heun_step', 'euler_maruyama_update', 'reverse_diffusion_update', 'snr_step_size', 'euler_maruyama_step', 'pc_step', 'PREDICTORS', 'Step', 'SamplerState', 'iterate', 'sample', 'count_nfe', 'ddim_timesteps', 'SAMPLERS', 'PC_DEFAULTS', 'sampler_plan', 'generate_images', 'GUIDANCE_CONVENTIONS', 'convert_guidance', 'classifier_free_guidance', 'classifier_guidance', 'classifier_log_likelihood_grad', 'classifier_free_denoiser', 'classifier_guided_denoiser', 'check_class_labels', 'langevin_update', 'langevin_chain', 'annealed_langevin', 'swap_neighbours', 'replica_exchange_langevin']
