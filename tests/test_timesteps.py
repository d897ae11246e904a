"""Importance sampling of t (ddpm_lib.core.timesteps) and the importance-weighted losses.

The proposal is checked against counts of its own draws, the weights against the definition
``w_t = 1 / (T p_t)`` built here by hand, and the unbiasedness against the uniform-t objective computed
exactly (a sum over every t) on a fixed toy loss. A tiny training run with t = 1 oversampled resumes bit
for bit, and an old run's checkpoint (written before the field existed) still resumes. About 5 s on one thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:randomly tests/test_timesteps.py``
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ddpm_lib.checkpoint import read_checkpoint, save_checkpoint
from ddpm_lib.core.losses import hybrid_loss, simple_loss, vlb_loss
from ddpm_lib.core.schedules import cosine_schedule
from ddpm_lib.core.timesteps import first_step_proposal, oversample_first_step
from ddpm_lib.training import ddpm
from ddpm_lib.training.ddpm import PRESETS, TrainConfig, train

from test_learned_variance import TINY_LV, train_full_and_resumed


def test_first_step_proposal_is_the_mixture_of_a_point_mass_and_uniform():
    T, rho = 10, 0.3
    p = first_step_proposal(T, rho)
    assert p.dtype == torch.float64 and p.shape == (T + 1,)
    by_hand = [0.0, rho + (1 - rho) / T] + [(1 - rho) / T] * (T - 1)
    assert p.tolist() == pytest.approx(by_hand, abs=1e-15)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-15)
    assert torch.equal(first_step_proposal(T, 0.0)[1:], torch.full((T,), 1 / T, dtype=torch.float64))


@pytest.mark.parametrize("T, rho", [(0, 0.1), (10, -0.1), (10, 1.0)])
def test_first_step_proposal_refuses_bad_arguments(T, rho):
    with pytest.raises(ValueError, match="T >= 1|rho"):
        first_step_proposal(T, rho)


def test_oversampled_draws_follow_the_proposal_and_carry_its_weights():
    T, rho, n = 8, 0.25, 200_000
    g = torch.Generator().manual_seed(0)
    t0 = torch.randint(1, T + 1, (n,), generator=g)
    t, w = oversample_first_step(t0, torch.rand(n, generator=g), rho, T)
    assert t.dtype == torch.int64 and w.dtype == torch.float32 and t.shape == w.shape == (n,)
    p = first_step_proposal(T, rho)
    freq = torch.bincount(t, minlength=T + 1).double() / n
    # each frequency within 5 binomial standard errors of p_t (a chance failure about 6e-7 per entry)
    se = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 5 * se + 1e-12).all())
    # the weights, by hand: 1 / (T rho + 1 - rho) at t = 1 and 1 / (1 - rho) elsewhere
    assert torch.allclose(w[t == 1], torch.tensor(1 / (T * rho + 1 - rho)), rtol=1e-6)
    assert torch.allclose(w[t > 1], torch.tensor(1 / (1 - rho)), rtol=1e-6)


def test_importance_weights_make_the_estimate_unbiased():
    # an arbitrary per-t loss, largest at t = 1 like the bound; the exact uniform-t mean against the
    # expectation under the proposal computed exactly (no sampling): sum_t p_t w_t L_t
    T, rho = 50, 0.4
    L = 1.0 / torch.arange(1, T + 1, dtype=torch.float64) ** 1.5
    p = first_step_proposal(T, rho)
    t = torch.arange(1, T + 1)
    _, w = oversample_first_step(t, torch.ones(T), rho, T)  # u = 1 never moves a row: the weight of each t itself
    expected = float((p[1:] * w.double() * L).sum())
    assert expected == pytest.approx(float(L.mean()), rel=1e-6)  # float32 weights: relative error ~1e-7
    # and the check can fail: the unweighted mean under the proposal is another number
    assert float((p[1:] * L).sum()) > 1.5 * float(L.mean())


def test_oversample_first_step_refuses_mismatched_or_out_of_range_draws():
    with pytest.raises(ValueError, match="shape"):
        oversample_first_step(torch.tensor([1, 2]), torch.rand(3), 0.1, 10)
    with pytest.raises(ValueError, match="1..T"):
        oversample_first_step(torch.tensor([0, 2]), torch.rand(2), 0.1, 10)


@pytest.mark.parametrize("loss", [simple_loss, vlb_loss])
def test_importance_weighted_losses_are_the_weighted_mean_of_each_examples_loss(loss):
    sched = cosine_schedule(20)
    g = torch.Generator().manual_seed(1)
    x0, eps, out = (torch.randn(5, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([1, 3, 7, 12, 20])
    w = torch.tensor([0.1, 1.0, 2.0, 0.5, 3.0])
    per_example = torch.stack([loss(out[i : i + 1], x0[i : i + 1], eps[i : i + 1], t[i : i + 1], sched, "v") for i in range(5)])
    assert float(loss(out, x0, eps, t, sched, "v", w)) == pytest.approx(float((w * per_example).mean()), rel=1e-6)
    # weights of one give the unweighted loss (to round-off: the mean is taken in another order)
    assert float(loss(out, x0, eps, t, sched, "v", torch.ones(5))) == pytest.approx(float(loss(out, x0, eps, t, sched, "v")), rel=1e-6)
    with pytest.raises(ValueError, match="one value per example"):
        loss(out, x0, eps, t, sched, "v", importance_weight=torch.ones(4))


def test_weighted_hybrid_loss_weighs_both_terms():
    sched = cosine_schedule(20)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 256, (4, 1, 4, 4), generator=g).float() / 127.5 - 1
    eps = torch.randn(4, 1, 4, 4, generator=g)
    out = torch.randn(4, 2, 4, 4, generator=g) * 0.3
    t = torch.tensor([1, 1, 5, 17])
    w = torch.tensor([0.05, 0.05, 1.2, 1.2])
    per_example = torch.stack([hybrid_loss(out[i : i + 1], x0[i : i + 1], eps[i : i + 1], t[i : i + 1], sched, "v") for i in range(4)])
    assert float(hybrid_loss(out, x0, eps, t, sched, "v", w)) == pytest.approx(float((w * per_example).mean()), rel=1e-5)


def test_train_config_validates_the_fraction_and_old_runs_default_to_uniform():
    with pytest.raises(ValueError, match="first_step_fraction"):
        replace(TINY_LV, first_step_fraction=1.0)
    assert TrainConfig.FIELDS_ADDED_LATER["first_step_fraction"] == 0.0
    assert TINY_LV.first_step_fraction == 0.0
    preset = PRESETS["mnist-cpu-lv-is"]
    assert preset.first_step_fraction == 0.125 and preset.init_from == "mnist-lv" and preset.loss == "hybrid"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("is")
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full, resumed, _ = train_full_and_resumed(replace(TINY_LV, first_step_fraction=0.5), root, images)
    uniform = train(TINY_LV, root / "uniform", steps=2, images=images, progress=False, threads=1)
    return full, resumed, uniform, images


def test_an_oversampled_run_resumes_bit_exactly(tiny_runs):
    full, resumed, _, _ = tiny_runs
    a, b = read_checkpoint(full).tensors, read_checkpoint(resumed).tensors
    ema = [k for k in a if k.startswith("ema.")]
    assert all(torch.equal(a[k], b[k]) for k in ema)
    assert read_checkpoint(full).meta["train"]["first_step_fraction"] == 0.5


def test_a_run_written_before_the_field_existed_resumes_as_a_uniform_run(tiny_runs, tmp_path):
    _, _, uniform, images = tiny_runs
    old = read_checkpoint(uniform)
    meta = {**old.meta, "train": {k: v for k, v in old.meta["train"].items() if k != "first_step_fraction"}}
    assert "first_step_fraction" not in meta["train"]
    save_checkpoint(tmp_path / "checkpoint.safetensors", old.tensors, meta)
    # it refuses a run with t = 1 oversampled (another estimator), and leaves the old checkpoint as it was
    with pytest.raises(ValueError, match="first_step_fraction"):
        train(replace(TINY_LV, first_step_fraction=0.5), tmp_path, steps=4, images=images, progress=False, threads=1)
    assert "first_step_fraction" not in read_checkpoint(tmp_path / "checkpoint.safetensors").meta["train"]
    # and resumes as the uniform run it was
    train(TINY_LV, tmp_path, steps=3, images=images, progress=False, threads=1)
    assert read_checkpoint(tmp_path / "checkpoint.safetensors").meta["state"]["step"] == 3


def _record_batch_losses(monkeypatch):
    # every call of the training loop's batch_loss, with the t, eps and importance weights it was given
    calls, original = [], ddpm.batch_loss

    def spy(net, x0, t, eps, config, bf16=False, y=None, importance_weight=None):
        calls.append((t.clone(), eps.clone(), None if importance_weight is None else importance_weight.clone()))
        return original(net, x0, t, eps, config, bf16, y, importance_weight)

    monkeypatch.setattr(ddpm, "batch_loss", spy)
    return calls


def test_the_loop_draws_t_from_the_proposal_and_passes_its_weights(monkeypatch, tmp_path):
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = replace(TINY_LV, first_step_fraction=0.5)
    calls = _record_batch_losses(monkeypatch)
    train(cfg, tmp_path / "is", steps=3, images=images, progress=False, threads=1)
    assert len(calls) == 3
    gen, T, B = torch.Generator().manual_seed(cfg.seed), cfg.schedule.T, cfg.batch_size
    for t, eps, weight in calls:  # the run's generator draws, in order: t, eps, then the proposal's u
        t_uniform = torch.randint(1, T + 1, (B,), generator=gen)
        assert torch.equal(eps, torch.randn((B, 1, 28, 28), generator=gen))
        t_expected, weight_expected = oversample_first_step(t_uniform, torch.rand(B, generator=gen), cfg.first_step_fraction, T)
        assert torch.equal(t, t_expected) and weight is not None and torch.equal(weight, weight_expected)
    assert any(bool((t == 1).any()) for t, _, _ in calls)  # the check can fail: some row was moved to t = 1
    calls.clear()
    train(TINY_LV, tmp_path / "uniform", steps=1, images=images, progress=False, threads=1)
    assert calls[0][2] is None  # a uniform run passes no weights, and draws no u
