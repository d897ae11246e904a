"""Where a generator meets a device: the sampling loop and the evaluation code on a GPU.

Skipped without CUDA. The CPU-only stand-in (a generator that reports another device than the
samples') is ``test_iterate_draws_noise_on_the_generators_device`` in tests/test_samplers.py; this
file runs the real case: a seeded CPU generator (as the command line and ``generate_images`` use)
with the samples and the network on the GPU, which raised "Expected a 'cuda' device type for
generator" before the loop drew its noise on the generator's device.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ddpm_lib.sampling import ddim_step, ddpm_step, dpm_solver_2m_step, heun_step, sample
from ddpm_lib.core.schedules import linear_schedule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STEPS = [ddpm_step, functools.partial(ddim_step, eta=1.0), dpm_solver_2m_step, heun_step]


@pytest.mark.parametrize("step", STEPS, ids=["ddpm", "ddim-eta1", "dpm-solver-2m", "heun"])
def test_cpu_generator_with_samples_on_cuda_matches_the_cpu(step):
    schedule = linear_schedule(50, 1e-3, 0.3)
    x_T = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = list(range(50, 0, -1))
    cpu = sample(lambda xt, t: torch.tanh(xt), schedule, step, x_T, ts, generator=torch.Generator().manual_seed(1))
    gpu = sample(lambda xt, t: torch.tanh(xt), schedule, step, x_T.cuda(), ts, generator=torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda"
    # the same noise (drawn on the CPU); only the float64 kernels' round-off may differ
    assert torch.allclose(gpu.cpu(), cpu, rtol=0.0, atol=1e-10)


def test_cuda_generator_with_samples_on_cuda():
    schedule = linear_schedule(20, 1e-3, 0.3)
    x_T = torch.randn(2, 1, 3, 3, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(2)
    out = sample(lambda xt, t: torch.tanh(xt), schedule, ddpm_step, x_T, list(range(20, 0, -1)), generator=gen)
    assert out.device.type == "cuda" and bool(out.isfinite().all())


def test_generate_images_and_elbo_on_cuda():
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.data import load_mnist
    from ddpm_lib.evaluation import elbo_bits_per_dim
    from ddpm_lib.sampling import generate_images

    cpu = generate_images(load_model("mnist"), 4, "ddpm-strided", steps=5, seed=3)
    gpu = generate_images(load_model("mnist", device="cuda"), 4, "ddpm-strided", steps=5, seed=3)  # runs where the model is
    assert gpu.device.type == "cpu" and gpu.dtype == torch.uint8 and gpu.shape == (4, 28, 28)
    # the same x_T and noise; float32 kernels differ between devices, so a few pixels may round differently
    assert (gpu.int() - cpu.int()).abs().float().mean() < 2.0
    result = elbo_bits_per_dim(load_model("mnist", device="cuda"), load_mnist("test")[0][:4], progress=False, n_strata=5)
    assert 0.0 < result["bits_per_dim"] < 8.0
