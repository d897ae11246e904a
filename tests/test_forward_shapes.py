"""The forward process refuses timesteps that are not one per example (or one for all)."""

import pytest
import torch

from ddpm_lib.core.forward import q_mean_var, q_sample, q_step_sample
from ddpm_lib.core.schedules import linear_schedule

SCHEDULE = linear_schedule(100)
X = torch.zeros(8, 1, 28, 28)


@pytest.mark.parametrize("shape", [(8, 2), (2, 8), (4,), (9,), (8, 1), (1,), (1, 8)])
def test_t_of_another_shape_is_refused(shape):
    t = torch.ones(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"q_sample: t must be 0-d .* or of shape \(8,\)"):
        q_sample(X, t, torch.zeros_like(X), SCHEDULE)
    with pytest.raises(ValueError, match=r"q_mean_var: t must be 0-d .* got t of shape " + str(shape).replace("(", r"\(").replace(")", r"\)")):
        q_mean_var(X, t, SCHEDULE)
    with pytest.raises(ValueError, match=r"q_step_sample: t must be 0-d"):
        q_step_sample(X, t, torch.zeros_like(X), SCHEDULE)


@pytest.mark.parametrize("t", [torch.full((8,), 5), torch.tensor(5), 5])
def test_t_per_example_or_one_for_all_is_accepted(t):
    eps = torch.randn(X.shape, generator=torch.Generator().manual_seed(0))
    xt = q_sample(X, t, eps, SCHEDULE)
    assert xt.shape == X.shape
    assert torch.equal(xt, q_sample(X, torch.full((8,), 5), eps, SCHEDULE))
    assert q_step_sample(X, t, eps, SCHEDULE).shape == X.shape
    mean, var = q_mean_var(X, t, SCHEDULE)
    assert mean.shape == X.shape


def test_a_batch_of_one_needs_t_of_shape_1_or_0d():
    x = torch.zeros(1, 3)
    assert q_sample(x, torch.tensor([7]), x, SCHEDULE).shape == (1, 3)
    with pytest.raises(ValueError, match=r"of shape \(1,\)"):
        q_sample(x, torch.tensor([7, 8]), x, SCHEDULE)


@pytest.mark.parametrize("shape", [(8, 2), (4,), (8, 1)])
def test_every_coefficient_refuses_t_that_would_add_dimensions(shape):
    # schedules.gather64 refuses t of 2 or more dimensions, or of a length that does not broadcast
    # against the batch, so the posterior and the parameterizations refuse too
    from ddpm_lib.core.targets import eps_from_x0
    from ddpm_lib.core.posterior import posterior_mean, posterior_variance

    t = torch.ones(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"gather: t must be 0-d or 1-d"):
        posterior_mean(X, X, t, SCHEDULE)
    with pytest.raises(ValueError, match=r"gather: t must be 0-d or 1-d"):
        posterior_variance(t, SCHEDULE, like=X)
    with pytest.raises(ValueError, match=r"gather: t must be 0-d or 1-d"):
        eps_from_x0(X, t, X, SCHEDULE)
