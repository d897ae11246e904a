"""Chapter "Diffusion among the generative models": the numbers its prose and exercises state, and its MNIST table.

The chapter's cells print what they compute; numbers written in its markdown (the toy's code lengths, the
exercises' answers, the published anchors) are text. Each test below finds the stated number by the words around
it and compares it with an independent computation or with the output the cell stored. The likelihood table is
rebuilt here from the files ``ddpm_lib`` ships (``importlib.resources``), so that a changed JSON file fails this
test until the notebook is executed again; and the table's code is run on a directory without the ODE evaluation,
where it must say "not yet measured" instead of giving a number.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from ddpm_lib.checkpoint import load_vae

from prose import NOTEBOOKS, markdown, rounds_to, stated

F64 = torch.float64
LN2 = math.log(2)
NAME = "generative_models"
RESULTS = files("ddpm_lib") / "weights"


def cells():
    return json.loads((NOTEBOOKS / f"{NAME}.ipynb").read_text())["cells"]


def outputs() -> str:
    texts = []
    for cell in cells():
        for out in cell.get("outputs", []):
            if "text" in out:
                texts.append("".join(out["text"]))
    return "\n".join(texts)


def code_cell(marker: str) -> str:
    found = [("".join(c["source"])) for c in cells() if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(found) == 1, f"{marker!r} is in {len(found)} code cells"
    return found[0]


def toy_P():
    """The chapter's data distribution, written out again: a correlated blob on 8 x 8 cells plus 0.25 at (0, 0)."""
    levels = torch.arange(8, dtype=F64)
    k1, k2 = torch.meshgrid(levels, levels, indexing="ij")
    blob = torch.exp(-((k1 - 4.5) ** 2 - 1.2 * (k1 - 4.5) * (k2 - 4.0) + (k2 - 4.0) ** 2) / 3.0)
    p = 0.75 * blob / blob.sum()
    p[0, 0] += 0.25
    return p, k1, k2


# --- the toy -----------------------------------------------------------------------------------------------------------


def test_the_toy_data_and_its_entropy():
    text, out = markdown(NAME), outputs()
    assert "a quarter of its mass moved to the cell $(0, 0)$" in text
    p, _, _ = toy_P()
    assert rounds_to(float(p[0, 0]), stated(out, r"P\(0, 0\) = ([0-9.]+);"))
    entropy = float(-(p * torch.log2(p)).sum()) / 2
    assert rounds_to(entropy, stated(out, r"the floor of every exact model: ([0-9.]+) bits/dim"))
    # the code cell defines the same distribution as toy_P
    src = code_cell("P[0, 0] += 0.25")
    assert "blob = torch.exp(-((K1 - 4.5) ** 2 - 1.2 * (K1 - 4.5) * (K2 - 4.0) + (K2 - 4.0) ** 2) / 3.0)" in src
    assert "P = 0.75 * blob / blob.sum()" in src


def _toy_table() -> dict[str, float]:
    rows = re.findall(r"^(entropy H\(P\)|autoregressive, exact|density, binned \(exact\)|density, dequantized|"
                      r"latent model, exact|latent model, -ELBO) +([0-9.]+)  ", outputs(), re.M)
    table = {name: float(v) for name, v in rows}
    assert len(table) == 6, table
    return table


def test_the_toy_numbers_the_prose_compares():
    # "The density model has the shorter exact code length of the two (2.25 against 2.30 bits/dim), but ... its
    # dequantized bound (2.31), is longer than the autoregressive model's exact number"
    text, table = markdown(NAME), _toy_table()
    dens_w, ar_w = re.search(r"the two \(([0-9.]+) against ([0-9.]+) bits/dim\)", text).groups()
    bound_w = stated(text, r"its dequantized bound \(([0-9.]+)\)")
    assert rounds_to(table["density, binned (exact)"], dens_w) and rounds_to(table["autoregressive, exact"], ar_w)
    assert rounds_to(table["density, dequantized"], bound_w)
    assert table["density, binned (exact)"] < table["autoregressive, exact"] < table["density, dequantized"]
    # every exact number above the entropy, every bound above its exact value
    assert table["entropy H(P)"] < min(table["autoregressive, exact"], table["density, binned (exact)"], table["latent model, exact"])
    assert table["latent model, exact"] < table["latent model, -ELBO"]


def test_the_bump_density_goes_below_the_entropy_and_the_stored_values_follow_the_formula():
    # at the cell centres p_s = P(k) / (2 pi s^2) up to neighbours e^{-1/(2 s^2)} smaller: H + log2(2 pi s^2) / 2
    p, _, _ = toy_P()
    entropy = float(-(p * torch.log2(p)).sum()) / 2
    stored = dict(re.findall(r"s = +([0-9.]+): 'bits/dim' at the levels +(-?[0-9.]+);", outputs()))
    for s in ("0.01", "0.001"):
        assert rounds_to(entropy + 0.5 * math.log2(2 * math.pi * float(s) ** 2), stored[s]) and float(stored[s]) < entropy
    # dequantized, the same density pays E_U |U - 1/2|^2 / (2 s^2) = 1 / (12 s^2) nats per image on top of that,
    # 1 / (24 s^2 ln 2) bits/dim (the prose's formula): the stored bound follows it and never goes below the entropy
    assert r"$1/(24\, s^2 \ln 2)$ bits/dim" in markdown(NAME)
    deq = dict(re.findall(r"s = +([0-9.]+): 'bits/dim' at the levels +-?[0-9.]+;  dequantized bound +([0-9.]+)", outputs()))
    assert len(deq) == 4 and all(float(v) > entropy for v in deq.values())
    for s in ("0.01", "0.001"):
        centres = entropy + 0.5 * math.log2(2 * math.pi * float(s) ** 2)
        assert rounds_to(centres + 1 / (24 * float(s) ** 2 * LN2), deq[s]), (s, deq[s])


def _bumps_at_centres(s: float) -> float:
    # -E_P log2 p_s(k + 1/2) / 2 with every bump included (no approximation)
    p, k1, k2 = toy_P()
    c = torch.stack([k1.flatten(), k2.flatten()], 1)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    dens = (p.flatten()[None, :] * torch.exp(-d2 / (2 * s * s)) / (2 * math.pi * s * s)).sum(1)
    return float(-(p.flatten() * torch.log2(dens)).sum()) / 2


def test_bumps_exercise():
    # ex-gen-bumps: "It is 0 at $s = 2^{-H(P)}/\sqrt{2\pi} = 0.086$"; "e^{-1/(2s^2)} \approx e^{-68}"
    text = markdown(NAME)
    p, _, _ = toy_P()
    entropy = float(-(p * torch.log2(p)).sum()) / 2
    s_star = 2**-entropy / math.sqrt(2 * math.pi)
    assert rounds_to(s_star, stated(text, r"\\sqrt\{2\\pi\} = ([0-9.]+)\$"))
    lo, hi = 0.01, 0.5  # bisection on the exact value: its root is the formula's
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _bumps_at_centres(mid) < 0 else (lo, mid)
    assert abs(lo - s_star) < 1e-12
    assert int(stated(text, r"e\^\{-1/\(2s\^2\)\} \\approx e\^\{-(\d+)\}")) == round(1 / (2 * s_star**2))


def test_gaussian_decoder_exercise():
    # ex-gen-gaussian-decoder: "The three numbers are 2.76, 2.78 and 7.78 bits/dim"
    text = markdown(NAME)
    written = re.search(r"The three numbers\s+are ([0-9.]+), ([0-9.]+) and ([0-9.]+) bits/dim", text).groups()
    p, k1, k2 = toy_P()
    a, w, sigma = torch.tensor([3.5, 3.5], dtype=F64), torch.tensor([2.0, 2.0], dtype=F64), 1.0
    cov = torch.outer(w, w) + sigma**2 * torch.eye(2, dtype=F64)
    inv = torch.linalg.inv(cov)
    # the binned mass of N(a, cov) on each unit cell, by Monte Carlo-free 2-D Gauss-Legendre (a different route
    # from the chapter's solution, which integrates over z)
    import numpy as np

    x, wts = np.polynomial.legendre.leggauss(40)
    u, wu = torch.tensor((x + 1) / 2, dtype=F64), torch.tensor(wts / 2, dtype=F64)
    y1 = k1[..., None, None] + u[:, None]
    y2 = k2[..., None, None] + u[None, :]
    r = torch.stack([y1.expand(8, 8, 40, 40), y2.expand(8, 8, 40, 40)], -1) - a
    log_dens = -0.5 * torch.einsum("...i,ij,...j->...", r, inv, r) - 0.5 * torch.logdet(2 * math.pi * cov)
    p_bin = (torch.outer(wu, wu) * log_dens.exp()).sum((-1, -2))
    deq = (torch.outer(wu, wu) * log_dens).sum((-1, -2))
    c = torch.stack([k1, k2], -1) + 0.5 - a
    deq_closed = -0.5 * torch.einsum("...i,ij,...j->...", c, inv, c) - 0.5 * torch.logdet(2 * math.pi * cov) - inv.trace() / 24
    assert float((deq - deq_closed).abs().max()) < 1e-10
    elbo_prior = -0.5 * ((c**2).sum(-1) + 2 / 12 + (w**2).sum()) / sigma**2 - math.log(2 * math.pi * sigma**2)
    computed = [float(-(p * v).sum()) / (2 * LN2) for v in (p_bin.log(), deq, elbo_prior)]
    assert computed[0] < computed[1] < computed[2]
    assert all(rounds_to(v, w_) for v, w_ in zip(computed, written)), (computed, written)


# --- the MNIST table -----------------------------------------------------------------------------------------------------


def table_namespace() -> dict:
    """Run the definitions of the table cell (its constants and functions, not its printing) in a fresh namespace."""
    src = code_cell("def mnist_rows(")
    definitions = src.split("vae_meta = load_vae")[0]
    namespace = {"json": json, "math": math, "torch": torch, "F64": F64, "files": files}
    exec(definitions, namespace)  # noqa: S102 - the notebook's own code
    return namespace


def test_the_table_is_rebuilt_from_the_shipped_files():
    ns = table_namespace()
    rows = ns["mnist_rows"](RESULTS, load_vae("vae-mnist")[1]["test"])
    out = outputs()
    elbo = json.loads(RESULTS.joinpath("mnist-nll-test.json").read_text())
    assert rows[1][1] == elbo["bits_per_dim"] and rows[1][3] == elbo["n_images"] == 10_000
    assert rows[0][1] == load_vae("vae-mnist")[1]["test"]["bits_per_dim"]
    ode_file = RESULTS.joinpath("mnist-ode-nll.json")
    if ode_file.is_file() and json.loads(ode_file.read_text()).get("bits_per_dim_per_image"):
        ode = json.loads(ode_file.read_text())
        per_image = torch.tensor(ode["bits_per_dim_per_image"], dtype=F64)
        assert rows[2][3] == len(per_image) and abs(rows[2][1] - float(per_image.mean())) < 1e-12
        # the mean and standard error agree with the ones the evaluation stored beside the per-image values
        assert abs(rows[2][1] - ode["bits_per_dim"]) < 1e-9 and abs(rows[2][2] - ode["bits_per_dim_stderr"]) < 1e-9
    # the stored output is this table: rerun the notebook when a file changes
    for i, (name, value, se, n, what, source) in enumerate(rows, 1):
        line = f"{i}. {name:31s} {ns['show'](value, se):>18s} {n if n else '':>7}"
        assert line in out, f"row {i} of the stored table differs from the shipped files: execute the notebook again"
        assert f"{i}. {what} [{source}]" in out


@pytest.mark.parametrize("ode_content", [None, {"bits_per_dim": 1.4, "bits_per_dim_per_image": []}])
def test_the_table_says_not_yet_measured_without_per_image_values(tmp_path, ode_content):
    ns = table_namespace()
    shutil.copy(Path(str(RESULTS.joinpath("mnist-nll-test.json"))), tmp_path / "mnist-nll-test.json")
    if ode_content is not None:
        (tmp_path / "mnist-ode-nll.json").write_text(json.dumps(ode_content))
    rows = ns["mnist_rows"](tmp_path, {"bits_per_dim": 1.5, "bits_per_dim_stderr": 0.01, "images": 10_000})
    name, value, se, n, what, source = rows[2]
    assert "probability-flow" in name and value is None and se is None and n is None and source == "not yet measured"
    assert ns["show"](value, se) == "not yet measured"


def test_show_prints_to_the_precision_of_the_error():
    ns = table_namespace()
    assert ns["show"](1.54243, 0.00441) == "1.5424 +- 0.0044"
    assert ns["show"](1.4474, 0.0786) == "1.447 +- 0.079"
    assert ns["show"](0.99, None) == "0.99"


def test_the_published_anchors_in_the_prose_are_the_table_s():
    text = markdown(NAME)
    published = {name: value for name, value, what, source in table_namespace()["PUBLISHED"]}
    assert published == {"RealNVP": 1.06, "Glow": 1.05, "FFJORD": 0.99, "Residual Flow": 0.97, "autoregressive transformer": 0.62}
    for name in ("RealNVP", "Glow", "FFJORD", "Residual Flow"):
        assert float(stated(text, rf"\*\*{name}\*\* ([0-9.]+)")) == published[name]
    assert float(stated(text, r"\*\*An autoregressive transformer\*\*, about ([0-9.]+) bits/dim")) == published["autoregressive transformer"]
    # each row says what it is; the only exact one is the autoregressive figure, cited with its own, more precise value
    kinds = {name: what for name, value, what, source in table_namespace()["PUBLISHED"]}
    assert kinds["autoregressive transformer"].startswith("exact discrete likelihood")
    assert all(w.startswith("upper bound via uniform dequantization") for n, w in kinds.items() if n != "autoregressive transformer")
    ar_paragraph = text[text.index("**An autoregressive transformer**"):].split("\n\n")[0]
    assert "{cite:t}`katharopoulos2020transformers`" in ar_paragraph
    assert round(float(stated(ar_paragraph, r"their MNIST table, ([0-9.]+)")), 2) == published["autoregressive transformer"]


def test_the_prose_comparisons_hold_for_the_shipped_numbers():
    vae = load_vae("vae-mnist")[1]["test"]
    elbo = json.loads(RESULTS.joinpath("mnist-nll-test.json").read_text())
    # "this book's VAE bounds the negative log-likelihood of the MNIST test set lower than this book's DDPM does"
    gap, se = elbo["bits_per_dim"] - vae["bits_per_dim"], math.hypot(elbo["bits_per_dim_stderr"], vae["bits_per_dim_stderr"])
    assert gap > 5 * se
    assert "about ten times further from real digits" in re.sub(r"\s+", " ", markdown("training_mnist"))
    # "row 3 covers only the first $N$ test images"; and the exercise: the one exact row lies below every bound
    ode_file = RESULTS.joinpath("mnist-ode-nll.json")
    rows = table_namespace()["mnist_rows"](RESULTS, vae)
    if ode_file.is_file() and rows[2][1] is not None:
        assert rows[2][3] < elbo["n_images"]
        assert rows[2][1] + 5 * rows[2][2] < elbo["bits_per_dim"]  # the ODE's bound lies below the ELBO
    exact = [r for r in rows if r[4].startswith("exact")]
    bounds = [r for r in rows if r[4].startswith("upper bound") and r[1] is not None]
    assert len(exact) == 1 and min(r[1] for r in bounds) > exact[0][1]


def test_the_colab_cell_is_the_posterior_chapter_s():
    first = next(c for c in cells() if c["cell_type"] == "code")
    posterior = json.loads((NOTEBOOKS / "posterior.ipynb").read_text())["cells"][1]
    assert "".join(first["source"]) == "".join(posterior["source"]) and first["metadata"]["tags"] == ["hide-input"]


def test_joint_divergence_splits_with_the_prior_and_is_negative_without_it():
    # eq. joint-kl with z for x_{1:T}, for a fixed latent model near the chapter's fit and the encoder q = the Gaussian
    # with the exact posterior's mean and variance: KL(P q || p(z) P(k|z)) = KL(P || P_theta) + E_P KL(q || p(z|k)),
    # the left side from the ELBO, the right from the exact marginal and posterior (all on one fine grid in z);
    # dropping p(z) from the model's joint (the notes' reading) leaves a negative number, which no divergence is
    p, k1, k2 = toy_P()
    z = torch.linspace(-12, 12, 24_001, dtype=F64)
    h = float(z[1] - z[0])

    def integrate(values):  # trapezoid rule over the last axis
        return h * (values.sum(-1) - 0.5 * (values[..., 0] + values[..., -1]))

    def log_bin(k, mean, sd):  # a discretized Gaussian on [k, k + 1), the outer bins reaching to +-inf
        lo, hi = (k[..., None] - mean) / sd, (k[..., None] + 1 - mean) / sd
        flip = lo > 0
        a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
        inner = torch.special.log_ndtr(b) + torch.log1p(-torch.exp(torch.special.log_ndtr(a) - torch.special.log_ndtr(b)))
        k = k[..., None].expand_as(lo)
        return torch.where(k == 0, torch.special.log_ndtr(hi), torch.where(k == 7, torch.special.log_ndtr(-lo), inner))

    log_lik = log_bin(k1, 3.5 + 2.7 * z, 0.9) + log_bin(k2, 3.1 + 2.5 * z, 0.9)  # (8, 8, n)
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    log_joint = log_lik + log_prior
    log_marg = torch.log(integrate(log_joint.exp()))
    post = (log_joint - log_marg[..., None]).exp()
    m = integrate(post * z)
    v = integrate(post * (z - m[..., None]) ** 2)
    log_q = -0.5 * (z - m[..., None]) ** 2 / v[..., None] - 0.5 * torch.log(2 * math.pi * v[..., None])
    q = log_q.exp()
    elbo = integrate(q * (log_joint - log_q))
    posterior_kl = integrate(q * (log_q - (log_joint - log_marg[..., None])))
    assert bool((elbo < log_marg).all()) and abs(float(integrate(q).max()) - 1) < 1e-12
    joint_kl = float((p * (p.log() - elbo)).sum())
    split = float((p * (p.log() - log_marg)).sum()) + float((p * posterior_kl).sum())
    assert abs(joint_kl - split) < 1e-9
    without_prior = joint_kl + float((p * integrate(q * log_prior)).sum())
    assert without_prior < 0 < joint_kl
    # the chapter's own fit printed the same signs
    assert float(stated(outputs(), r"without the prior p\(z\) in the model's joint: (-[0-9.]+) nats")) < 0


def test_where_the_elbo_gap_sits():
    # "Its three largest values are in corners ... by far the largest at $(0, 7)$ ... then at the background cell
    # $(0, 0)$ and at $(7, 7)$ ... almost all (97 %) of the average ELBO gap": the stored output, and the share
    # recomputed from the toy table's two latent-model rows (a different route: P(0, 0) x the cell's gap / the mean gap)
    text, out, table = re.sub(r"\s+", " ", markdown(NAME)), outputs(), _toy_table()
    line = stated(out, r"(the ELBO gap's largest cell: .*)")
    first = re.search(r"largest cell: \((\d), (\d)\), more than ([0-9.]+) bit/dim \(P = ([0-9.e-]+)\)", line).groups()
    cells = [first] + re.findall(r"\((\d), (\d)\) ([0-9.]+) \(P = ([0-9.e-]+)\)", line.split("the next two")[1])
    assert [(int(a), int(b)) for a, b, _, _ in cells] == [(0, 7), (0, 0), (7, 7)]
    assert all({int(a), int(b)} <= {0, 7} for a, b, _, _ in cells)  # corners: both bins outer ones
    gaps = [float(g) for _, _, g, _ in cells]  # the first is a lower bound (that cell's encoder is barely fitted)
    assert gaps[0] > 10 * gaps[1] and float(cells[0][3]) < 1e-6  # by far the largest, where the data almost never are
    assert "by far the largest at $(0, 7)$, which the data almost never visit" in text
    assert "then at the background cell $(0, 0)$ and at $(7, 7)$" in text
    share_w = stated(text, r"almost all \(([0-9]+) %\) of the average ELBO gap")
    assert share_w == stated(out, r"the background cell \(0, 0\) makes ([0-9]+)% of the average ELBO gap")
    mean_gap = table["latent model, -ELBO"] - table["latent model, exact"]  # each printed to 1e-4
    p00 = float(toy_P()[0][0, 0])
    assert abs(p00 * gaps[1] / mean_gap - float(share_w) / 100) < 0.03  # 0.035 and the gap are rounded: ~2 % apart
    assert "a few hundredths of a bit" in text and 0.01 < gaps[1] < 0.1


def test_the_toy_methods_and_widths_the_prose_states():
    text, out = re.sub(r"\s+", " ", markdown(NAME)), outputs()
    density, latent = code_cell("def expected_log_density("), code_cell("def log_marginal(")
    # "a Gauss-Legendre rule with 16 nodes per axis during the fit and 32 for the numbers, checked against 64"
    assert "16 nodes per axis during the fit and 32 for the numbers, checked against 64" in text
    assert "leggauss(16)" in density and "legendre_01(32)" in density and "legendre_01(64)" in density
    # "60 nodes in training, 120 for the numbers, checked against 240"; the trapezoid step 1e-3, checked against 5e-4
    assert "(60 nodes in training, 120 for the numbers, checked against 240)" in text
    assert "def elbo(th, q, n_nodes=60)" in latent and "elbo(vae, vae, 120)" in latent and "elbo(vae, vae, 240)" in latent
    assert r"on $[-12, 12]$ with step $10^{-3}$, checked against the step $5 \cdot 10^{-4}$" in text
    assert "torch.linspace(-12, 12, 24_001" in latent and "torch.linspace(-12, 12, 48_001" in latent
    # "never narrower than a standard deviation of 0.2 (printed below)"
    bound = stated(text, r"never narrower than a standard deviation of ([0-9.]+) \(printed below\)")
    assert float(stated(out, r"posterior of z has a standard deviation of at least ([0-9.]+) in every cell")) >= float(bound)
    # "its standard deviation, about 0.29, is that of a uniform variable on a bin", next to the background cell
    sd_w = stated(text, r"its standard deviation, about ([0-9.]+), is that of a uniform variable on a bin")
    centre = re.search(r"narrowest component sits at \(([0-9.]+), ([0-9.]+)\) with standard deviation ([0-9.]+)", out).groups()
    assert centre[2] == sd_w and rounds_to(1 / math.sqrt(12), sd_w) and float(centre[0]) < 1 and float(centre[1]) < 1
