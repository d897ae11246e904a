"""ddpm_lib: the library of the executable textbook on the mathematics of diffusion models.

The core mathematics (schedules, forward process, posterior, parameterizations, losses,
samplers) depends on torch alone; see the book's notation page for the symbols and the timestep
convention (``t`` in ``0..T``, ``t = 0`` the data).
"""

from .forward import q_mean_var, q_sample, q_step_sample
from .losses import simple_loss, vlb_loss, vlb_weight
from .parameterizations import (
    TARGETS,
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    score_from_eps,
    target_from_x0_eps,
    v_from_x0_eps,
    x0_eps_from_output,
    x0_from_eps,
    x0_from_v,
)
from .posterior import posterior_mean, posterior_mean_coefs, posterior_variance
from .schedules import Schedule, cosine_schedule, gather, linear_schedule, sigmoid_schedule

__version__ = "0.1.0"
