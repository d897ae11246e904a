"""The schedule explorer (ddpm_lib.teaching.widgets) draws every schedule kind and reports bad parameters as a message."""

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddpm_lib.core.schedules import cosine_schedule, linear_schedule, sigmoid_schedule  # noqa: E402
from ddpm_lib.teaching.widgets import SCHEDULE_KINDS, make_schedule, plot_schedule, schedule_explorer  # noqa: E402


@pytest.fixture
def digit():
    """A synthetic 28x28 'digit' in model range, so the test needs no MNIST."""
    img = -torch.ones(1, 1, 28, 28)
    img[..., 6:22, 12:16] = 1.0
    return img


def _texts(fig):
    return [txt.get_text() for ax in fig.axes for txt in ax.texts]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("t", [0, 1, 500, 1000])
def test_plot_schedule_draws_three_panels(kind, t, digit):
    fig = plot_schedule(kind, t=t, image=digit)
    assert len(fig.axes) == 3
    assert "Invalid parameters" not in _texts(fig)
    # the image panel shows x_t through to_uint8: a 28x28 array
    assert fig.axes[2].images[0].get_array().shape == (28, 28)


def test_plot_schedule_accepts_uint8_and_small_T(digit):
    uint8 = ((digit[0, 0] + 1) * 127.5).round().to(torch.uint8)
    fig = plot_schedule("cosine", t=3, T=10, image=uint8)
    assert len(fig.axes) == 3


@pytest.mark.parametrize(
    "params, fragment",
    [
        (dict(kind="linear", beta_end=1.0), "beta_t must lie in the open interval (0, 1)"),
        (dict(kind="linear", beta_start=0.0), "beta_t must lie in the open interval (0, 1)"),
        (dict(kind="cosine", s=-0.1), "the offset s must be >= 0"),
        (dict(kind="sigmoid", start=3.0, end=-3.0), "need start < end"),
        (dict(kind="sigmoid", tau=0.0), "tau must be > 0"),
        (dict(kind="quadratic"), "unknown schedule kind"),
        (dict(kind="linear", t=1001), "t must be an integer in 0..T"),
        (dict(kind="linear", t=-1), "t must be an integer in 0..T"),
        (dict(kind="linear", T=0), "T must be an integer >= 1"),
    ],
)
def test_invalid_parameters_give_a_message_not_an_exception(params, fragment, digit):
    fig = plot_schedule(image=digit, **params)
    texts = _texts(fig)
    assert "Invalid parameters" in texts
    assert any(fragment in txt.replace("\n", " ") for txt in texts), texts


def test_make_schedule_raises_for_bad_values():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        make_schedule("quadratic")
    with pytest.raises(ValueError, match="open interval"):
        make_schedule("linear", beta_end=1.5)


def test_schedule_explorer_builds_and_updates(digit, capsys):
    pytest.importorskip("ipywidgets")
    w = schedule_explorer(image=digit, T=50)
    kinds = [c for c in w.children if getattr(c, "description", "") == "schedule"]
    assert kinds and tuple(kinds[0].options) == SCHEDULE_KINDS
    for kind in SCHEDULE_KINDS:  # each change re-runs plot_schedule without raising
        kinds[0].value = kind
    with pytest.raises(ValueError, match="T must be an integer"):
        schedule_explorer(image=digit, T=0)


@pytest.mark.parametrize("kind, constructor", [("linear", linear_schedule), ("cosine", cosine_schedule), ("sigmoid", sigmoid_schedule)])
def test_defaults_are_the_schedule_constructors_defaults(kind, constructor):
    # make_schedule, plot_schedule and the sliders take their defaults from the constructors' signatures
    assert torch.equal(make_schedule(kind).beta, constructor().beta)
    for fn in (make_schedule, plot_schedule):
        params = inspect.signature(fn).parameters
        for name, p in inspect.signature(constructor).parameters.items():
            if name in params and name != "T":
                assert params[name].default == p.default, (fn.__name__, name)


def test_sliders_start_at_the_constructors_defaults(digit):
    pytest.importorskip("ipywidgets")
    w = schedule_explorer(image=digit, T=50)
    start = {c.description.split(" ")[0]: c.value for c in w.children if hasattr(c, "value")}
    for constructor in (linear_schedule, cosine_schedule, sigmoid_schedule):
        for name, p in inspect.signature(constructor).parameters.items():
            if name in start:
                assert start[name] == pytest.approx(p.default, rel=1e-12), name
    assert {"beta_start", "beta_end", "s", "start", "end", "tau"} <= set(start)
