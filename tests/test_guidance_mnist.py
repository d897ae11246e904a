"""The chapter "Guidance on MNIST": every number its prose states, against its stored outputs and the shipped JSON.

The chapter's cells print what they compute (the noisy and the clean classifier's accuracies, the size of the
classifier's correction against the implicit one, the sweeps read from ``ddpm_lib/weights``); each test finds a
statement in the markdown and checks it against those outputs or files, so that rerunning a command or a cell
cannot leave the prose behind.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

import pytest

from prose import markdown, rounds_to, stated  # noqa: E402  (tests/prose.py)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "guidance_mnist.ipynb"
WEIGHTS = files("ddpm_lib") / "weights"


def text() -> str:
    return " ".join(markdown("guidance_mnist").split())


def output_of(marker: str) -> str:
    """The printed output of the one code cell whose source contains ``marker``."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(cells) == 1, marker
    return "".join("".join(o.get("text", "")) for o in cells[0]["outputs"])


def sweeps() -> dict:
    return {"classifier": json.loads(WEIGHTS.joinpath("mnist-guidance-classifier.json").read_text()),
            "classifier-free": json.loads(WEIGHTS.joinpath("mnist-guidance-cfg.json").read_text())}


def row(method: str, g: float) -> dict:
    return next(r for r in sweeps()[method]["rows"] if r["guidance_scale"] == g)


def test_the_noisy_and_the_clean_classifier():
    out = output_of("clean_acc = {}")
    table = {int(m[0]): (float(m[1]), float(m[2])) for m in re.findall(r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)}
    assert sorted(table) == [1, 100, 250, 500, 750, 900, 1000]
    # "Both are near chance at t = T ... and both are good up to t = 250"
    assert all(abs(a - 0.1) < 0.03 for a in table[1000])
    assert all(min(table[t]) > 0.95 for t in (1, 100, 250))
    # "at t = 500 it reads 59% of the digits and the noisy one 98%, at t = 750 16% against 80%"
    t_ = text()
    assert rounds_to(100 * table[500][1], stated(t_, r"at \$t = 500\$ it reads ([0-9]+)%"))
    assert rounds_to(100 * table[500][0], stated(t_, r"of the digits and the noisy one ([0-9]+)%"))
    assert rounds_to(100 * table[750][1], stated(t_, r"at \$t = 750\$ ([0-9]+)% against"))
    assert rounds_to(100 * table[750][0], stated(t_, r"% against ([0-9]+)%\."))


def test_the_classifier_s_correction_against_the_implicit_one():
    out = output_of("implicit = cond_cfg(xt, t) - null_cfg(xt, t)")
    rows = {int(m[0]): (float(m[1]), float(m[2]), float(m[3])) for m in
            re.findall(r"^\s*(\d+)\s+([0-9.e+-]+)\s+([0-9.e+-]+)\s+(\d+)%\s+\d+%$", out, re.M)}
    assert sorted(rows) == [500, 900, 950, 999, 1000]
    assert "at five $t$ on 100 points" in text()
    ratio = {t: c / i for t, (c, i, _) in rows.items()}
    # "At t = T ... hundreds of times the implicit one, and nearly every pixel ... more than 1 outside [-1, 1]"
    assert 100 <= ratio[1000] < 1000 and rows[1000][2] >= 95
    # "at t = 999, the excess has fallen to about twenty times"
    assert 10 <= ratio[999] <= 30
    # "from t = 950 on the two corrections have about the same size" (within a factor 1.5)
    assert all(1 / 1.5 < ratio[t] < 1.5 for t in (950, 900))
    # "at t = 500 the classifier's is the smaller one, by about ten times"
    assert 5 <= 1 / ratio[500] <= 20
    t_ = text()
    assert "hundreds of times the implicit one" in t_ and "about twenty times" in t_ and "by about ten times" in t_
    # summary: "at t = T the trained classifier's is on average some forty times that bound" (the bound 2s, s = 1 here)
    assert 30 <= rows[1000][0] / 2 <= 50 and "some forty times that bound" in t_
    # "at t = 999 (a time the sampler never visits: its second evaluation is at t = 950)"
    from ddpm_lib.sampling.loop import sampler_plan

    timesteps = [int(v) for v in sampler_plan("dpm-solver-2m", 1000, 20)[1]]
    assert timesteps[:2] == [1000, 950] and 999 not in timesteps and "its second evaluation is at $t = 950$" in t_


def test_the_exact_gradient_at_t_T():
    # "at t = T the exact gradient is about 5e-5 times the difference of two denoisers": sqrt(ab_T) / (1 - ab_T)
    import math

    from ddpm_lib.checkpoint import load_model

    ab = float(load_model("mnist").schedule.alpha_bar[1000])
    assert rounds_to(math.sqrt(ab) / (1 - ab) / 1e-5, stated(text(), r"about \$([0-9.]+)\\cdot 10\^\{-5\}\$ times"))
    # "The coefficient (1 - alpha_bar_t) / sqrt(alpha_bar_t) is about 2e4 at t = T of the cosine schedule"
    assert rounds_to((1 - ab) / math.sqrt(ab) / 1e4, stated(text(), r"is about \$([0-9.]+)\\cdot 10\^4\$ at \$t = T\$"))


def test_the_label_s_effect_grows_with_t():
    out = output_of("per_image = (cond_cfg(xt, t) - null_cfg(xt, t))")
    assert "in units of 1e-3" in out
    values = [float(v) for v in re.findall(r"t = +\d+: ([0-9.]+) \+-", out)]
    assert len(values) == 4 and values == sorted(values) and values[-1] > 20 * values[0]


def test_the_sweeps_are_the_commands_the_readme_lists():
    s = sweeps()
    assert "guidance-sweep --checkpoint mnist --classifier mnist-noisy-classifier" in s["classifier"]["command"]
    assert "guidance-sweep --checkpoint mnist-cfg" in s["classifier-free"]["command"]
    for r in s.values():
        assert r["n"] == 2000 and r["sampler"] == "dpm-solver-2m" and r["steps"] == 20 and r["floor_sets"] == 5
        # the exercise's "evaluates the denoiser 20 times per image" (and so 40 U-Net calls for classifier-free guidance)
        assert all(q["denoiser_evaluations"] == 20 for q in r["rows"])
    # "The floor's own error, 7% of every ratio, is shared by every row of both sweeps"
    import math

    assert s["classifier"]["floor_values"] == s["classifier-free"]["floor_values"]
    r = s["classifier"]
    assert rounds_to(100 * r["floor_sd"] / math.sqrt(r["floor_sets"]) / r["floor"], stated(text(), r"The floor's own error, ([0-9]+)%"))


def test_the_reading_of_the_curves():
    t_ = text()
    cf, cg = sweeps()["classifier-free"], sweeps()["classifier"]
    # "the digit asked for is read about one time in ten": labels independent of unguided samples, 2,000 of them
    for method in ("classifier", "classifier-free"):
        assert abs(row(method, 0)["accuracy"] - 0.1) < 3 * 0.0067, method
    # "Classifier guidance at s = 0 is `mnist` itself (its ratio is that of DPM-Solver++(2M) at 20 evaluations ...)"
    part3 = json.loads(WEIGHTS.joinpath("mnist-samplers.json").read_text())
    dpm20 = next(r for r in part3["rows"] if r["sampler"] == "dpm-solver-2m" and r["nfe"] == 20)
    assert round(row("classifier", 0)["fd_ratio"], 2) == round(dpm20["fd_ratio"], 2)
    # "the 'no label' half of `mnist-cfg` is far worse": beyond the two errors combined
    a, b = row("classifier-free", 0), row("classifier", 0)
    assert a["fd_ratio"] - b["fd_ratio"] > 3 * (a["fd_ratio_se"] ** 2 + b["fd_ratio_se"] ** 2) ** 0.5
    # "90% of its digits are read as asked, at the lowest Fréchet ratio measured in this book, while ... reads 78% at s = 1"
    assert rounds_to(100 * row("classifier-free", 1)["accuracy"], stated(t_, r"([0-9]+)% of its digits are read as asked"))
    assert rounds_to(100 * row("classifier", 1)["accuracy"], stated(t_, r"`mnist` reads ([0-9]+)% at \$s = 1\$"))
    # "fine-tuning showed it the null label in one example in ten"
    assert "label dropout 0.1," in output_of("label dropout {train['label_dropout']}")
    # "so the 10% and 22% that are not": the misread fractions at g = 1
    assert rounds_to(100 * (1 - row("classifier-free", 1)["accuracy"]), stated(t_, r"so the ([0-9]+)% and [0-9]+% that are not"))
    assert rounds_to(100 * (1 - row("classifier", 1)["accuracy"]), stated(t_, r"so the [0-9]+% and ([0-9]+)% that are not"))
    sde = json.loads(WEIGHTS.joinpath("mnist-samplers-sde.json").read_text())
    every_ratio = [r["fd_ratio"] for r in part3["rows"] + sde["rows"] + cg["rows"] + cf["rows"]]
    assert row("classifier-free", 1)["fd_ratio"] == min(every_ratio)
    # "lowers the diversity within each class": for g >= 1, falling with g, in both sweeps
    for r in (cf, cg):
        div = [q["diversity"] for q in sorted(r["rows"], key=lambda q: q["guidance_scale"]) if q["guidance_scale"] >= 1]
        assert div == sorted(div, reverse=True)
    # "after a minimum (at g = 1 for classifier-free guidance, at s = 2 for classifier guidance) it rises steadily while
    # the accuracy still climbs"
    for r, g_min in ((cf, 1), (cg, 2)):
        rows = sorted(r["rows"], key=lambda q: q["guidance_scale"])
        assert min(rows, key=lambda q: q["fd_ratio"])["guidance_scale"] == g_min
        after = [q for q in rows if q["guidance_scale"] >= g_min]
        assert [q["fd_ratio"] for q in after] == sorted(q["fd_ratio"] for q in after)
        assert [q["accuracy"] for q in after] == sorted(q["accuracy"] for q in after)
        # "though neither distance is resolved from the one at the next scale up": the difference of the two distances
        # (the floor cancels) within two of its errors, the rows' errors combined as if independent
        lo, up = after[0], after[1]
        assert abs(up["fd"] - lo["fd"]) < 2 * (lo["fd_se"] ** 2 + up["fd_se"] ** 2) ** 0.5
    assert "neither distance is resolved from the one at the next scale up" in t_
    # "Neither method reaches 99% accuracy at a Fréchet ratio of at most 3"
    assert not any(q["accuracy"] >= 0.99 and q["fd_ratio"] <= 3 for q in cf["rows"] + cg["rows"])
    assert "none of the scales" in output_of("def meets(row)")
    # "classifier-free guidance reads 97% at a ratio below 3 and 99% only at a ratio above 5"
    assert any(rounds_to(100 * q["accuracy"], "97") and q["fd_ratio"] < 3 for q in cf["rows"])
    assert all(q["fd_ratio"] > 5 for q in cf["rows"] if q["accuracy"] >= 0.99)
    # "classifier guidance reaches 99% only at s = 8, at a ratio near 6"
    first = min((q for q in cg["rows"] if q["accuracy"] >= 0.99), key=lambda q: q["guidance_scale"])
    assert first["guidance_scale"] == 8 and rounds_to(first["fd_ratio"], "6")
    # "(1,985 of 2,000 read as asked, ...; s = 6, whose 1,979 the table rounds to 0.990, falls just short, at a ratio of 5)"
    n = cg["n"]
    assert round(first["accuracy"] * n) == int(stated(t_, r"\(([0-9,]+) of 2,000 read as asked").replace(",", ""))
    s6 = row("classifier", 6)
    assert round(s6["accuracy"] * n) == int(stated(t_, r"\$s = 6\$, whose ([0-9,]+) the table").replace(",", ""))
    assert s6["accuracy"] < 0.99 and f"{s6['accuracy']:.3f}" == "0.990" and rounds_to(s6["fd_ratio"], "5")
    sweep_table = output_of("evaluator_accuracy = ")
    assert f"{round(first['accuracy'] * n)} of {n}" in sweep_table and f"{round(s6['accuracy'] * n)} of {n}" in sweep_table
    # "on this model guidance buys that only by making each class less varied than the real one": every row at 99%
    # or more has a diversity below 1 by more than three of its errors
    assert all(q["diversity"] + 3 * q["diversity_se"] < 1 for q in cf["rows"] + cg["rows"] if q["accuracy"] >= 0.99)
    # "Above 1 need not mean more variety than real digits": the unconditional rows are above 1
    assert all(row(m, 0)["diversity"] > 1 for m in ("classifier", "classifier-free"))
    # "The evaluation classifier itself reads 99.14% of the real test digits"
    assert "99.14%" in output_of("evaluator_accuracy = ") and "reads 99.14% of the real test digits" in t_


def test_the_exercise_solutions_run():
    # the solutions' code blocks, run against the stored sweeps (they print; here they must not fail)
    from ddpm_lib.sampling import convert_guidance

    cells = json.loads(NOTEBOOK.read_text())["cells"]
    blocks = re.findall(r"```python\n(.*?)```", "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"), re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(block, {"sweeps": sweeps(), "convert_guidance": convert_guidance})
    assert convert_guidance(2.0, "classifier_scale_conditional", "guidance_scale") == 3.0
