"""ddpm_lib: the library of the executable textbook on the mathematics of diffusion models.

The layers, each a subpackage (a module imports only from the layers below it):

* :mod:`ddpm_lib.core`: the mathematics, torch only (schedules, forward process, posterior, targets,
  losses, ELBO terms);
* :mod:`ddpm_lib.models`: networks only; :mod:`ddpm_lib.data`: MNIST and the pixel conversion;
  :mod:`ddpm_lib.checkpoint`: safetensors files and the shipped weights;
* :mod:`ddpm_lib.sampling`: denoisers, steps, the shared loop; :mod:`ddpm_lib.toys`: problems with exact answers;
* :mod:`ddpm_lib.training`, :mod:`ddpm_lib.evaluation`: the loops over data; :mod:`ddpm_lib.teaching`:
  SymPy helpers, checkers and widgets for the chapters; ``python -m ddpm_lib``: the command line.

This top level re-exports the most used core names. See the book's notation page for the symbols and
the timestep convention (``t`` in ``0..T``, ``t = 0`` the data).
"""

from .core.forward import q_mean_var, q_sample, q_step_sample
from .core.losses import simple_loss, vlb_loss, vlb_weight
from .core.targets import (
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
from .core.posterior import posterior_mean, posterior_mean_coefs, posterior_variance
from .core.schedules import Schedule, cosine_schedule, gather, linear_schedule, sigmoid_schedule

__version__ = "0.1.0"
