"""Numbers and rankings stated in the prose of "Training a DDPM on MNIST", pinned to the files they come from.

The chapter's cells print what they read from the JSON files that the commands wrote (in
``ddpm_lib/weights``); its markdown states some of those numbers again in words ("about 1.9", "four
standard errors", "DPM-Solver++(2M) is best or level at every budget").
Each test finds the statement in the markdown and checks it against the file, so that rerunning a
command (or editing the prose) cannot leave the two disagreeing.
"""

from __future__ import annotations

import json
import math
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "training_mnist.ipynb"


def _read(name: str) -> dict:
    return json.loads(files("ddpm_lib").joinpath("weights", name).read_text())


@pytest.fixture(scope="module")
def prose() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return " ".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")


@pytest.fixture(scope="module")
def table() -> dict:
    return _read("mnist-samplers.json")


def _rows(table):
    return {(r["sampler"], r["nfe"]): r for r in table["rows"]}


def _paired(table, a, b, nfe):
    """FD(a) - FD(b) at ``nfe`` and its paired bootstrap standard error."""
    rows = _rows(table)
    diff = rows[a, nfe]["fd"] - rows[b, nfe]["fd"]
    se = float(np.std(np.subtract(rows[a, nfe]["fd_bootstrap"], rows[b, nfe]["fd_bootstrap"]), ddof=1))
    return diff, se


def test_the_table_is_the_one_the_prose_describes(prose, table):
    assert table["n"] >= 2000  # the book's rule for sample-quality distances
    assert f"$N = {table['n']}$" in prose
    assert "averaged over five disjoint sets" in prose and table["floor_sets"] == 5
    assert "resampled with replacement 200 times" in prose and table["n_bootstrap"] == 200
    budgets = sorted({r["nfe"] for r in table["rows"]})
    assert "each at 10, 20 and 50 network evaluations" in prose and budgets == [10, 20, 50]
    assert {r["sampler"] for r in table["rows"]} == {"ddpm-strided", "ddim", "dpm-solver-2m"}


def test_the_best_ratio_and_its_distance_from_one(prose, table):
    best = min(table["rows"], key=lambda r: r["fd_ratio"])
    assert (best["sampler"], best["nfe"]) == ("ddpm-strided", 50)
    assert "The best ratio in the table, about 3.1 (the strided ancestral sampler at 50 evaluations)" in prose
    assert round(best["fd_ratio"], 1) == 3.1
    assert "is more than five of its standard errors above 1" in prose
    assert (best["fd_ratio"] - 1) / best["fd_ratio_se"] > 5
    # the targets: the bound of mnist-lv-is meets 1.3; no model's best ratio at 20 evaluations meets 2
    assert "The bound's target is met by `mnist-lv-is`, at 1.195 bits/dim; neither sample target is met" in prose
    names = ("mnist", "mnist-lv", "mnist-lv-is")
    tables = {"mnist": table, "mnist-lv": _read("mnist-lv-samplers.json"), "mnist-lv-is": _read("mnist-lv-is-samplers.json")}
    best_20 = {name: min((r for r in t["rows"] if r["nfe"] == 20), key=lambda r: r["fd"]) for name, t in tables.items()}
    bounds = {name: _read(f"{name}-nll-test.json")["bits_per_dim"] for name in names}
    assert bounds["mnist"] > bounds["mnist-lv"] > 1.3 > bounds["mnist-lv-is"] and f"{bounds['mnist-lv-is']:.3f}" == "1.195"
    assert all(best_20[name]["fd_ratio"] > 2.0 for name in names)
    assert best_20["mnist-lv"]["fd_ratio"] < best_20["mnist"]["fd_ratio"]
    # "its best ratio, 2.51 +- 0.33 (the strided ancestral sampler), misses 2 as mnist-lv's 2.47 +- 0.28 did"
    lv, lv_is = best_20["mnist-lv"], best_20["mnist-lv-is"]
    assert "its best ratio, 2.51 ± 0.33 (the strided ancestral sampler), misses 2 as `mnist-lv`'s 2.47 ± 0.28 did" in prose
    assert lv_is["sampler"] == "ddpm-strided" and (f"{lv_is['fd_ratio']:.2f}", f"{lv_is['fd_ratio_se']:.2f}") == ("2.51", "0.33")
    assert lv["sampler"] == "dpm-solver-2m" and (f"{lv['fd_ratio']:.2f}", f"{lv['fd_ratio_se']:.2f}") == ("2.47", "0.28")
    # "Paired on the same noise, DPM-Solver++(2M)'s FD fell by 10.4 +- 1.2"
    for name in ("mnist-lv", "mnist-lv-is"):
        t = tables[name]
        assert t["n"] == table["n"] and t["n_bootstrap"] == table["n_bootstrap"] and t["floor_seed"] == table["floor_seed"]
    old = _rows(table)["dpm-solver-2m", 20]
    diff = lv["fd"] - old["fd"]
    se = float(np.std(np.subtract(lv["fd_bootstrap"], old["fd_bootstrap"]), ddof=1))
    assert "DPM-Solver++(2M)'s FD (not the ratio) fell by 10.4 ± 1.2, from 28.4 to 18.0" in prose
    assert (f"{-diff:.1f}", f"{se:.1f}", f"{old['fd']:.1f}", f"{lv['fd']:.1f}") == ("10.4", "1.2", "28.4", "18.0")
    # "against mnist-lv, every row at 20 evaluations is within two paired standard errors"
    assert "against `mnist-lv`, every row at 20 evaluations is within two paired standard errors" in prose
    lv_rows = _rows(tables["mnist-lv"])
    for r in tables["mnist-lv-is"]["rows"]:
        if r["nfe"] == 20:
            o = lv_rows[r["sampler"], 20]
            assert abs(r["fd"] - o["fd"]) < 2 * float(np.std(np.subtract(r["fd_bootstrap"], o["fd_bootstrap"]), ddof=1))
    # "about 1.3 million training images seen in all"
    seen = sum(json.loads(files("ddpm_lib").joinpath("weights", f"{n}-metrics.jsonl").read_text().splitlines()[-1])["images_seen"]
               for n in names)
    assert "about 1.3 million training images seen in all" in prose and round(seen / 1e6, 1) == 1.3
    # "mnist-lv beats it by 0.19 bits/dim and mnist-lv-is by 0.35"
    assert "`mnist-lv` beats it by 0.19 bits/dim and `mnist-lv-is` by 0.35" in prose
    assert round(load_vae_bpd() - bounds["mnist-lv"], 2) == 0.19 and round(load_vae_bpd() - bounds["mnist-lv-is"], 2) == 0.35


def test_the_floor_is_random_digits_and_every_row_lies_above_it(prose, table):
    assert table["floor_seed"] == 0  # random_real_sets, not consecutive blocks
    assert "every row lies above the range of the five random sets of real digits" in prose
    high = max(table["floor_values"]) / table["floor"]
    assert all(r["fd_ratio"] > high for r in table["rows"])


def test_the_rankings_the_prose_states(prose, table):
    # "DPM-Solver++(2M) is best or level at every budget": no row beats it by two paired standard errors
    assert "DPM-Solver++(2M) is best or level at every budget." in prose
    for nfe in (10, 20, 50):
        for other in ("ddpm-strided", "ddim"):
            diff, se = _paired(table, other, "dpm-solver-2m", nfe)
            assert diff / se > -2, (nfe, other, diff, se)
    # "At 10 evaluations it (DPM-Solver++(2M)) beats the strided ancestral sampler by more than two paired standard
    # errors, and the strided sampler does no better than DDIM."
    assert "At 10 evaluations it beats the strided ancestral sampler by more than two paired standard errors" in prose
    diff, se = _paired(table, "ddpm-strided", "dpm-solver-2m", 10)
    assert diff > 0 and diff / se > 2, (diff, se)
    diff, se = _paired(table, "ddpm-strided", "ddim", 10)
    assert diff / se > -2, (diff, se)  # not significantly better
    # "At 20 evaluations the strided sampler and DPM-Solver++(2M) do not differ significantly (the difference is
    # within one standard error)."
    assert "(the difference is within one standard error)" in prose
    diff, se = _paired(table, "ddpm-strided", "dpm-solver-2m", 20)
    assert abs(diff) < se, (diff, se)
    # "At 50 evaluations the strided sampler is ahead of DDIM by more than two paired standard errors, and ahead of
    # DPM-Solver++(2M) by less than two, which we do not count."
    assert "At 50 evaluations the strided sampler is ahead of DDIM by more than two paired standard errors, and ahead of DPM-Solver++(2M) by less than two" in prose
    diff, se = _paired(table, "ddpm-strided", "ddim", 50)
    assert diff < 0 and -diff / se > 2, (diff, se)
    diff, se = _paired(table, "ddpm-strided", "dpm-solver-2m", 50)
    assert diff < 0 and -diff / se < 2, (diff, se)
    # "DPM-Solver++(2M) beats DDIM (first order) by many paired standard errors at 10, 20 and 50 evaluations"
    assert "DPM-Solver++(2M) beats DDIM (first order) by many paired standard errors at 10, 20 and 50 evaluations" in prose
    for nfe in (10, 20, 50):
        diff, se = _paired(table, "dpm-solver-2m", "ddim", nfe)
        assert diff < 0 and -diff / se > 5, (nfe, diff, se)


def test_the_bounds_the_prose_compares(prose):
    nll = _read("mnist-nll-test.json")
    from ddpm_lib.checkpoint import load_vae

    vae_bpd = load_vae("vae-mnist")[1]["test"]["bits_per_dim"]
    assert "The VAE chapter called its 1.54 bits/dim" in prose and round(vae_bpd, 2) == 1.54
    assert "its bound is about 0.11 bits/dim higher" in prose
    assert round(nll["bits_per_dim"] - vae_bpd, 2) == 0.11
    runs = [_read(f"{name}-nll-test.json")["bits_per_dim"] for name in ("mnist-cpu", "mnist-cpu-v2000", "mnist", "mnist-lv", "mnist-lv-is")]
    assert "(2.65, then 1.98, then 1.65, then 1.35, then 1.19 bits/dim)" in prose
    assert [round(b, 2) for b in runs] == [2.65, 1.98, 1.65, 1.35, 1.19]


def test_the_decoder_width_numbers(prose):
    # 0.368 bits/dim: background pixels (exactly -1) under a perfect prediction, N(-1, beta_1) on (-inf, -1 + 1/255]
    import torch

    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.data import load_mnist

    beta_1 = load_model("mnist").schedule.beta[1].double()
    mass = torch.special.ndtr((1 / 255) / beta_1.sqrt())
    background = (load_mnist("test")[0] == 0).double().mean()
    assert "background pixels alone 0.368 bits/dim even with perfect predictions, more than that gap" in prose
    assert round(float(background * -torch.log2(mass)), 3) == 0.368
    assert 0.368 > round(_read("mnist-nll-test.json")["bits_per_dim"] - load_vae_bpd(), 2)


def load_vae_bpd() -> float:
    from ddpm_lib.checkpoint import load_vae

    return load_vae("vae-mnist")[1]["test"]["bits_per_dim"]


def test_the_last_step_numbers(prose):
    # "alpha_bar_T ~ 2 10^-9 while alpha_bar_(T-1) is about 1000 times larger; the eps-weight ... about 500 per pixel"
    from ddpm_lib.checkpoint import load_model

    schedule = load_model("mnist").schedule
    ab = schedule.alpha_bar.double()
    T = schedule.T
    assert r"$\bar\alpha_T \approx 2 \cdot 10^{-9}$" in prose and round(float(ab[T]) * 1e9) == 2
    assert "is about 1000 times larger" in prose and round(float(ab[T - 1] / ab[T]), -2) == 1000
    snr = ab / (1 - ab)
    eps_weight = 0.5 * (snr[T - 1] - snr[T]) / snr[T]  # book eq. eps-weight at t = T
    assert "is then about 500 per pixel" in prose and round(float(eps_weight), -2) == 500
    assert math.isclose(float(eps_weight), 0.5 * (float(ab[T - 1] / ab[T]) * float((1 - ab[T]) / (1 - ab[T - 1])) - 1), rel_tol=1e-9)


def test_the_bootstrap_calibration_the_prose_states(prose):
    cal = _read("mnist-fd-calibration.json")
    assert cal["n"] >= 2000 and len(cal["real"]["fd"]) >= 20 and len(cal["dpm-solver-2m-10"]["fd"]) == 5
    real = cal["real"]["bootstrap_se_of_first"] / cal["real"]["sd_over_sets"]
    model = cal["dpm-solver-2m-10"]["bootstrap_se_of_first"] / cal["dpm-solver-2m-10"]["sd_over_sets"]
    assert "they are about twice too large near the floor" in prose and round(real) == 2
    assert "still somewhat too large for a model row (from five seeds" in prose and 1 < model < 1.6
    # "With the errors shrunk by the model row's factor (about 1.3, measured on one deterministic row only), the
    # strided sampler's lead over DPM-Solver++(2M) at 50 evaluations would still be under two standard errors, its
    # lead over DDIM at 20 evaluations would reach about two, and the other statements above stand."
    assert "(about 1.3, measured on one deterministic row only)" in prose and round(model, 1) == 1.3
    assert "its lead over DDIM at 20 evaluations would reach about two, and the other statements above stand" in prose
    table = _read("mnist-samplers.json")
    diff, se = _paired(table, "ddpm-strided", "dpm-solver-2m", 50)
    assert diff < 0 and -diff / (se / model) < 2
    # the other rankings, with the shrunk errors: each significant one stays significant, each null one stays null
    for a, b, nfe, significant in (("ddpm-strided", "dpm-solver-2m", 10, True), ("ddpm-strided", "ddim", 50, True),
                                   ("ddpm-strided", "dpm-solver-2m", 20, False)):
        diff, se = _paired(table, a, b, nfe)
        assert (abs(diff) / (se / model) > 2) if significant else (abs(diff) / (se / model) < 1), (a, b, nfe)
    diff, se = _paired(table, "ddpm-strided", "ddim", 20)
    assert diff < 0 and round(-diff / (se / model)) == 2
    diff, se = _paired(table, "ddpm-strided", "ddim", 10)
    assert diff / (se / model) > -2


def test_the_decoder_width_exercise(prose):
    # ex-training-decoder-width: "(1/255)/2.462 = 0.00159, so beta_1 < 2.54 x 10^-6", "beta_1 = 4.13 x 10^-5, about 16
    # times more", "must rise from 10.1 to about 12.9 nats"
    from statistics import NormalDist

    from ddpm_lib.checkpoint import load_model

    schedule = load_model("mnist").schedule
    z = NormalDist().inv_cdf(2**-0.01)
    sigma_max = (1 / 255) / z
    beta_1 = float(schedule.beta[1])
    # the bound is tight: at sigma_max the cost is 0.01 bits, and a pixel then costs -log2 Phi(z)
    assert math.isclose(-math.log2(NormalDist().cdf((1 / 255) / sigma_max)), 0.01, rel_tol=1e-9)
    assert f"(1/255)/{z:.3f} = {sigma_max:.5f}" in prose
    assert f"\\beta_1 < {sigma_max**2 * 1e6:.2f} \\times 10^{{-6}}" in prose
    assert f"\\beta_1 = {beta_1 * 1e5:.2f} \\times 10^{{-5}}$, about {beta_1 / sigma_max**2:.0f} times more" in prose
    lam_now, lam_needed = float(schedule.log_snr[1]), math.log((1 - sigma_max**2) / sigma_max**2)
    assert f"must rise from ${lam_now:.1f}$ to about ${lam_needed:.1f}$ nats" in prose


def test_the_bits_per_dimension_exercise(prose):
    # ex-training-bits: 1.652 bits/dim -> 1295 bits, 898 nats per image; 2^(6272 - 1295) = 2^4977
    bpd = _read("mnist-nll-test.json")["bits_per_dim"]
    assert f"bound on the test set is {bpd:.3f} bits/dim" in prose
    bits = bpd * 784
    assert f"$1.652 \\times 784 = {bits:.0f}$ bits, or ${bits:.0f} \\ln 2 = {bits * math.log(2):.0f}$ nats" in prose
    assert f"$2^{{6272 - {bits:.0f}}} = 2^{{{8 * 784 - bits:.0f}}}$" in prose and 8 * 784 == 6272


def test_the_three_errors_exercise(prose):
    # ex-training-three-errors: eps error = alpha_bar_t * v error exactly, x0 error = (1 - alpha_bar_t) * v error, for
    # the shipped v-model's own predictions; and the numbers quoted from the printed table at t = 600
    import torch

    from ddpm_lib import q_sample
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.core.targets import x0_eps_from_output

    loaded = load_model("mnist")
    schedule = loaded.schedule
    assert loaded.target == "v"
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 1, 28, 28), generator=g) * 2 - 1
    for t_now in (1, 600, 1000):
        t = torch.full((4,), t_now)
        eps = torch.randn(x0.shape, generator=g)
        xt = q_sample(x0, t, eps, schedule)
        with torch.no_grad():
            out = loaded.model(xt, t)
        ab = float(schedule.alpha_bar[t_now])
        v = ab**0.5 * eps - (1 - ab) ** 0.5 * x0
        x0_hat, eps_hat = x0_eps_from_output(out, xt, t, schedule, "v")
        v_err = float(((out - v) ** 2).double().sum())
        # float32 predictions: relative 1e-4 covers the round-off of forming eps_hat and x0_hat from out and xt
        assert math.isclose(float(((eps_hat - eps) ** 2).double().sum()), ab * v_err, rel_tol=1e-4)
        assert math.isclose(float(((x0_hat - x0) ** 2).double().sum()), (1 - ab) * v_err, rel_tol=1e-4, abs_tol=1e-6)
    ab600 = float(schedule.alpha_bar[600])
    # the v and eps errors at t = 600 as the chapter's cell printed them (rows "t:", "v loss:", "eps loss:")
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    printed = next("".join(o["text"]) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                   if "v loss:" in "".join(o.get("text", "")))
    rows = {line.split(":")[0]: line.split(":")[1].split() for line in printed.splitlines()}
    col = rows["t"].index("600")
    assert (rows["v loss"][col], rows["eps loss"][col]) == ("0.071", "0.024")
    assert f"\\bar\\alpha_{{600}} = {ab600:.3f}$ and $0.071 \\times {ab600:.3f} = {0.071 * ab600:.3f}$" in prose
    assert f"differs from 1 by ${float(schedule.beta[1]) * 1e5:.0f} \\times 10^{{-5}}$" in prose


def test_the_log_snr_strata_the_prose_describes(prose):
    # "Near t = T ... groups of one or two steps ... some intervals hold no step at all. With K = 25 this gives
    # 20 non-empty groups, 21 network calls per image"
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.evaluation import elbo_strata

    assert "With $K = 25$ this gives 20 non-empty groups, 21 network calls" in prose
    groups = elbo_strata(load_model("mnist").schedule, 25)
    sizes = [len(g) for g in groups]
    assert len(groups) == 20 < 25  # five of the 25 intervals are empty
    singles = [i for i, s in enumerate(sizes) if s == 1]
    assert singles and min(singles) > len(sizes) // 2  # the one-step groups lie near t = T, not near t = 2
    assert max(sizes[-3:]) <= 2 and sizes[0] > 2  # the last three groups: 2, 1, 1 steps


def test_the_learned_variance_numbers(prose):
    # "Learning the variances": the three bounds of the whole test set and the split of the gain
    old, fixed, learned = (_read(f"{name}-nll-test.json") for name in ("mnist", "mnist-lv-fixed", "mnist-lv"))
    assert not old.get("fixed_variances") and fixed["fixed_variances"] and not learned["fixed_variances"]
    assert fixed["n_images"] == learned["n_images"] == 10000
    assert "bound on the whole test set is 1.348 bits/dim, down from 1.652" in prose
    assert f"{learned['bits_per_dim']:.3f}" == "1.348" and f"{old['bits_per_dim']:.3f}" == "1.652"
    assert "learned variances set aside it is 1.592" in prose and f"{fixed['bits_per_dim']:.3f}" == "1.592"
    assert "moved the means by 0.06 bits/dim, and the variances bought 0.24" in prose
    assert round(old["bits_per_dim"] - fixed["bits_per_dim"], 2) == 0.06
    gain = fixed["bits_per_dim"] - learned["bits_per_dim"]
    assert round(gain, 2) == 0.24
    # "About three quarters of that is in the decoder (0.695 -> 0.517) and the rest in the denoising terms (0.897 -> 0.832)"
    assert "(0.695 → 0.517)" in prose and (f"{fixed['decoder_bpd']:.3f}", f"{learned['decoder_bpd']:.3f}") == ("0.695", "0.517")
    assert "(0.897 → 0.832)" in prose and (f"{fixed['denoising_bpd']:.3f}", f"{learned['denoising_bpd']:.3f}") == ("0.897", "0.832")
    assert 0.7 <= (fixed["decoder_bpd"] - learned["decoder_bpd"]) / gain <= 0.8
    # the differences are far outside the errors (each bound's standard error is about 0.003)
    assert max(r["bits_per_dim_stderr"] for r in (old, fixed, learned)) < 0.004
    # "still missed, by 0.05"
    assert "The target of 1.3 bits/dim is still missed, by 0.05" in prose
    assert round(learned["bits_per_dim"] - 1.3, 2) == 0.05 and learned["bits_per_dim"] - 1.3 > 5 * learned["bits_per_dim_stderr"]


def test_the_fine_tuning_the_prose_describes(prose):
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.training.ddpm import PRESETS

    lv = load_model("mnist-lv")
    cfg = PRESETS["mnist-cpu-lv"]
    assert lv.meta["train"]["loss"] == "hybrid" and lv.meta["model"]["learn_variance"] is True
    assert lv.meta["train"]["init_from"] == "mnist" and cfg.init_from == "mnist"
    assert "the 6,000 further steps" in prose and lv.meta["state"]["step"] == cfg.steps == 6000
    # "one in a thousand, so about 380 in the whole fine-tuning (6,000 steps of 64)": the expected number drawn at t = 1
    assert "one in a thousand, so about 380 in the whole fine-tuning (6,000 steps of 64)" in prose
    assert lv.schedule.T == 1000 and cfg.batch_size == 64 and round(cfg.steps * cfg.batch_size / lv.schedule.T, -1) == 380


def test_the_side_by_side_numbers(prose):
    sbs = _read("mnist-side-by-side.json")
    ours, theirs = sbs["models"]["ddpm_lib"], sbs["models"]["diffusers"]
    assert sbs["threads"] == 1 and sbs["budget_s"] == 1200 and "In the same 20 minutes of one CPU thread" in prose
    for m in (ours, theirs):
        assert abs(m["train_time_s"] - sbs["budget_s"]) < 5  # the budget, up to the last step's overshoot
    assert "ddpm_lib's recipe took 2,301 steps and the course's 748" in prose
    assert (ours["steps"], theirs["steps"]) == (2301, 748)
    assert abs(theirs["params"] / ours["params"] - 1) < 0.1  # "nearly the same parameter count"
    assert "costs about 1.4 times the FLOPs per image" in prose
    assert round(theirs["train_gflop_per_step"] / ours["train_gflop_per_step"], 1) == 1.4
    assert "runs them at less than half the rate" in prose and theirs["gflop_per_s"] < ours["gflop_per_s"] / 2
    assert sbs["elbo_images"] == 2000 and sbs["fd"]["n"] == 2000 and sbs["fd"]["steps"] == 20
    assert "Its bound on the first 2,000 test digits is 1.89 bits/dim against 2.38" in prose
    assert (round(ours["elbo"]["bits_per_dim"], 2), round(theirs["elbo"]["bits_per_dim"], 2)) == (1.89, 2.38)
    assert "its FD ratio is 11.9 against 43.3" in prose
    assert (round(ours["fd"]["fd_ratio"], 1), round(theirs["fd"]["fd_ratio"], 1)) == (11.9, 43.3)
    # "both gaps are many standard errors wide": more than ten combined standard errors each
    for key, se in (("elbo", "bits_per_dim_stderr"), ("fd", "fd_ratio_se")):
        value = "bits_per_dim" if key == "elbo" else "fd_ratio"
        gap = theirs[key][value] - ours[key][value]
        assert gap > 10 * math.hypot(ours[key][se], theirs[key][se])
    assert "Neither model is near `mnist`, which took 10,000 steps" in prose
    assert json.loads(files("ddpm_lib").joinpath("weights", "mnist-metrics.jsonl").read_text().splitlines()[-1])["step"] == 10000


def test_the_speed_levers_the_prose_states(prose):
    speed = _read("mnist-speed-levers.json")
    c = {row["name"]: row for row in speed["configs"]}
    eager, bf16, compiled, diffusers = (c[k] for k in ("eager fp32", "bf16 autocast", "compile", "diffusers UNet2DModel, eager fp32"))
    assert speed["threads"] == 1 and speed["batch_size"] == 64 and speed["params"]["ddpm_lib"] == speed["params"]["diffusers"]
    assert speed["matmul_peak_gflops_per_s"]["n"] == 1024 and "on 1024 × 1024 float32" in prose
    assert "Eager float32 takes 382 ms per step at 91 GFLOP/s, 101% of what `torch.mm` reaches" in prose
    assert (round(eager["step_ms"]), round(eager["gflops_per_s"]), round(100 * eager["fraction_of_fp32_matmul_peak"])) == (382, 91, 101)
    assert "bf16 autocast made the step 1.19 times faster, at 29% of the bf16 matrix rate" in prose
    assert (f"{bf16['speedup_vs_eager_fp32']:.2f}", round(100 * bf16["fraction_of_bf16_matmul_peak"])) == ("1.19", 29)
    assert "by up to 0.19 of its length, against about 1.5 between two batches' gradients" in prose
    assert round(bf16["precision_vs_eager_fp32"]["max_grad_rel_diff"], 2) == 0.19
    assert all(1.4 <= g <= 1.6 for g in speed["precision_check"]["grad_rel_diff_between_batches_fp32"])
    assert "`torch.compile` made the step slower (0.84 times eager's speed), after more than a minute" in prose
    assert f"{compiled['speedup_vs_eager_fp32']:.2f}" == "0.84" and compiled["first_call_s"] > 60 and compiled["gradients_ok"]
    # "wrong gradients: 104 of the 150 parameter tensors got exactly zero gradient, while its loss was as close to eager
    # float32's as bf16 autocast's own (within 0.3%)"
    assert "as bf16 autocast's own (within 0.3%)" in prose
    for name in ("compile + bf16 autocast", "compile + channels_last + bf16 autocast"):
        check = c[name]["precision_vs_eager_fp32"]
        assert not c[name]["gradients_ok"] and (check["zero_grad_tensors"], check["parameter_tensors"]) == (104, 150)
        assert check["max_loss_rel_diff"] <= bf16["precision_vs_eager_fp32"]["max_loss_rel_diff"] < 0.003
    assert "104 of the 150 parameter tensors got exactly zero gradient" in prose
    # the levers that did not help: channels_last alone and with bf16 slower than without it
    assert c["channels_last"]["step_ms"] > eager["step_ms"] and c["channels_last + bf16 autocast"]["step_ms"] > bf16["step_ms"]
    assert "The same network built from diffusers' blocks takes 372 ms" in prose and round(diffusers["step_ms"]) == 372
    assert "level with it (0.97)" in prose and f"{eager['speedup_vs_diffusers']:.2f}" == "0.97"
    assert "bf16 autocast, is 1.16 times faster" in prose and f"{bf16['speedup_vs_diffusers']:.2f}" == "1.16"
    assert speed["fastest_ddpm_lib_config"] == "bf16 autocast"
    # "from round to round one configuration's time varied by up to 11% (bf16's speed-up from 1.13 to 1.35)"
    import statistics

    assert "eager float32's time varied by up to 11% and some configurations' by up to 25% (bf16's" in prose
    assert "speed-up from 1.13 to 1.35)" in prose and speed["repeats"] == 5

    def spread(row):
        return max(abs(ms / statistics.median(row["round_ms"]) - 1) for ms in row["round_ms"])

    assert round(100 * spread(eager)) == 11 and round(100 * max(spread(r) for r in c.values() if not r["error"])) == 25
    per_round = [e / b for e, b in zip(eager["round_ms"], bf16["round_ms"])]
    assert (f"{min(per_round):.2f}", f"{max(per_round):.2f}") == ("1.13", "1.35")


def test_the_first_step_fraction_exercise(prose):
    # ex-training-first-step-fraction: its solution's code runs (its SymPy checks and the grid's agreement are asserts
    # inside), and the prose states what it prints: "about 115 times", "rho* ~ 0.10", "4.81 bits/dim against 4.82"
    import torch

    from ddpm_lib.core.timesteps import first_step_proposal

    cells = json.loads(NOTEBOOK.read_text())["cells"]
    marker = "{solution} ex-training-first-step-fraction"
    solution = next("".join(c["source"]) for c in cells if marker in "".join(c["source"])).split(marker)[1]
    code = re.search(r"```python\n(.*?)```", solution, re.S).group(1)
    namespace = {"torch": torch, "read": _read, "first_step_proposal": first_step_proposal}
    exec(code, namespace)  # noqa: S102  the book's own solution code
    k, best, draw_sd = namespace["k_lv"], namespace["best"], namespace["draw_sd"]
    assert f"$L_0$ is about {k:.0f} times the root mean square" in prose
    assert f"$\\rho^* \\approx {best:.2f}$" in prose
    assert f"standard deviation is {draw_sd(best):.2f} bits/dim against {draw_sd(0.125):.2f} at $\\rho = 1/8$" in prose


def test_the_importance_sampling_numbers(prose):
    # "Drawing t = 1 more often": the spread of a one-draw estimate of mnist-lv's bound at rho = 0 and 1/8, the
    # draws it saves, and the effective share of a batch
    import torch

    from ddpm_lib.core.timesteps import first_step_proposal

    L = torch.tensor(_read("mnist-lv-nll-test.json")["denoising_bpd_by_t"], dtype=torch.float64)
    T = len(L)

    def spread(rho):
        p = first_step_proposal(T, rho)[1:]
        return float((p * (L / p - L.sum()) ** 2).sum().sqrt()), float(1 / (p * (1 / (T * p)) ** 2).sum())

    (sd_uniform, _), (sd_is, share) = spread(0.0), spread(0.125)
    assert f"standard deviation of {sd_is:.1f} bits/dim instead of {sd_uniform:.1f}" in prose
    assert "about a twelfth of the draws" in prose and round((sd_uniform / sd_is) ** 2) == 12
    assert f"an unweighted mean over {share:.0%} of the batch" in prose


def test_the_mnist_lv_is_numbers(prose):
    # the bound of mnist-lv-is against mnist-lv's, term by term, and the target it meets
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.training.ddpm import PRESETS

    lv, lv_is = _read("mnist-lv-nll-test.json"), _read("mnist-lv-is-nll-test.json")
    assert lv_is["n_images"] == 10000 and not lv_is["fixed_variances"]
    assert f"whole test set is {lv_is['bits_per_dim']:.3f} bits/dim, down from {lv['bits_per_dim']:.3f}" in prose
    assert f"({lv['decoder_bpd']:.3f} → {lv_is['decoder_bpd']:.3f})" in prose
    assert "the denoising terms moved by less than 0.01" in prose and abs(lv["denoising_bpd"] - lv_is["denoising_bpd"]) < 0.01
    margin = 1.3 - lv_is["bits_per_dim"]
    assert "The target of 1.3 bits/dim is met, by about 0.1 bits/dim, some 35 standard errors" in prose
    assert round(margin, 1) == 0.1 and round(margin / lv_is["bits_per_dim_stderr"]) == 35
    # the run: the preset and its command, and the time of the three runs behind it
    model = load_model("mnist-lv-is")
    cfg = PRESETS["mnist-cpu-lv-is"]
    assert model.meta["train"]["first_step_fraction"] == cfg.first_step_fraction == 0.125
    assert model.meta["train"]["init_from"] == "mnist-lv" and model.meta["state"]["step"] == cfg.steps == 4000
    assert "4,000 more steps of 64 with $\\rho = 1/8$" in prose and cfg.batch_size == 64
    minutes = sum(load_model(n).meta["state"]["wall_s"] for n in ("mnist", "mnist-lv", "mnist-lv-is")) / 60
    assert f"took {minutes:.0f} minutes together, inside the 2.5 hours" in prose and minutes <= 150


def _printed(marker: str) -> str:
    """The stored text output of the chapter's code cell whose output contains ``marker`` (nbval holds it to a fresh run)."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return next(text for c in cells if c["cell_type"] == "code"
                for text in ["".join("".join(o.get("text", "")) for o in c.get("outputs", []))] if marker in text)


def test_the_control_and_decoder_width_numbers(prose):
    # the widths, the paired decoder terms and v's travel, as the cells printed them and as the prose states them
    lv_out = _printed("median sigma_1")  # the first cell that prints widths: mnist-lv's
    is_out = _printed("the proposal's share")
    lv_med = re.search(r"background \(0\):.*median sigma_1 (\S+)", lv_out).group(1)
    is_med = re.search(r"background \(0\):.*median sigma_1 (\S+)", is_out.split("the proposal's share")[1]).group(1)
    assert (lv_med, is_med) == ("0.0037", "0.0015")
    assert f"median $\\sigma_1$ fell from {lv_med} to {is_med}" in prose and float(is_med) < 1 / 255 / 2
    split = lambda out: dict(re.findall(r"(background|ink|in between) (\d\.\d{3})", out.split("L_0 of these digits")[-1]))  # noqa: E731
    lv_split, is_split = split(lv_out), split(is_out)
    assert f"share of $L_0$ from {lv_split['background']} to {is_split['background']} bits/dim" in prose
    assert f"did not gain ({lv_split['in between']} → {is_split['in between']})" in prose
    diffs = re.findall(r"L_0\((\S+)\) - L_0\((\S+)\) = ([+-]\d\.\d{3}) \+- (\S+) bits/dim", is_out)
    steps, proposal = (float(d[2]) for d in diffs)
    assert [d[:2] for d in diffs] == [("mnist-lv-control", "mnist-lv"), ("mnist-lv-is", "mnist-lv-control")]
    assert f"took it down by {-steps:.2f} bits/dim" in prose and f"took it down by\nanother {-proposal:.2f}".replace("\n", " ") in prose
    assert all(-float(d[2]) > 10 * float(d[3]) for d in diffs)  # "far beyond its paired error"
    share = re.search(r"the proposal's share of mnist-lv-is's drop in L_0: (\d+)%", is_out).group(1)
    assert f"only {share}% of the whole" in prose and share == "13"
    # "The denoising terms are the same for the two within their errors" (first 2,000 digits)
    control, is_ = _read("mnist-lv-control-nll-first2000.json"), _read("mnist-lv-is-nll-first2000.json")
    assert abs(control["denoising_bpd"] - is_["denoising_bpd"]) < is_["bits_per_dim_stderr"]
    # v's travel: "log beta_1 - log tilde-beta_2 = 0.64", "4.3 units of v", "v ~ -2.5" and "v ~ -8.2"
    gap, per_halving = re.search(r"log beta_1 - log tilde-beta_2 = (\S+), so each halving of sigma_1 moves v by (\S+):", is_out).groups()
    assert f"= {float(gap):.2f}$, so each halving of\n$\\sigma_1$ takes {per_halving} units".replace("\n", " ") in prose
    vs = re.findall(r"sigma_1 = \S+ needs v = (\S+)", is_out)
    assert f"sat at $v \\approx {vs[0]}$" in prose and f"sit at $v \\approx {vs[1]}$" in prose
