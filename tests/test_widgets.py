"""The explorers' Python side (ddpm_lib.teaching.widgets): state, defaults, validation and the MIME bundle.

What the explorers compute runs in JavaScript; tests/test_explorers.py compares it with the library.
"""

import inspect
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm_lib.core.schedules import cosine_schedule, linear_schedule, sigmoid_schedule
from ddpm_lib.data import to_model
from ddpm_lib.teaching.widgets import ElboExplorer, ScheduleExplorer, default_digit, make_schedule
from ddpm_lib.toys import LinearGaussianModel

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def digit():
    """A synthetic 28x28 uint8 'digit', so the tests need no MNIST."""
    img = torch.zeros(28, 28, dtype=torch.uint8)
    img[6:22, 12:16] = 255
    img[6:22, 11] = 90
    return img


def test_make_schedule_raises_for_bad_values():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        make_schedule("quadratic")
    with pytest.raises(ValueError, match="open interval"):
        make_schedule("linear", beta_end=1.5)


@pytest.mark.parametrize("kind, constructor", [("linear", linear_schedule), ("cosine", cosine_schedule), ("sigmoid", sigmoid_schedule)])
def test_defaults_are_the_schedule_constructors_defaults(kind, constructor, digit):
    # make_schedule and the explorer's starting values and reference curves come from the constructors' signatures
    assert torch.equal(make_schedule(kind).beta, constructor().beta)
    params = inspect.signature(make_schedule).parameters
    w = ScheduleExplorer(digit)
    for name, p in inspect.signature(constructor).parameters.items():
        if name in params and name != "T":
            assert params[name].default == p.default, name
            assert getattr(w, name) == p.default and w.defaults[name] == p.default, name
    assert {"beta_start", "beta_end", "s", "start", "end", "tau"} == set(w.defaults)


def test_schedule_explorer_state(digit):
    w = ScheduleExplorer(digit, T=50, seed=3, kind="cosine", s=0.02)
    assert (w.kind, w.T, w.t, w.s, w.height, w.width) == ("cosine", 50, 25, 0.02, 28, 28)
    assert w.pixels == digit.reshape(-1).tolist()
    # the noise is NumPy's default_rng: the same numbers on every machine
    assert w.eps == np.random.default_rng(3).standard_normal(784).tolist()
    assert ScheduleExplorer(digit, seed=4).eps != w.eps


def test_a_float_image_goes_through_to_uint8(digit):
    as_float = to_model(digit[None])  # (1, 1, 28, 28) in [-1, 1]
    assert ScheduleExplorer(as_float).pixels == ScheduleExplorer(digit).pixels


def test_parameters_the_schedule_rejects_are_allowed(digit):
    # the explorer shows the library's message for them (tests/test_explorers.py); the constructor accepts them
    w = ScheduleExplorer(digit, kind="sigmoid", start=3.0, end=-3.0)
    assert (w.start, w.end) == (3.0, -3.0)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(T=0), ValueError, "T must be an integer >= 1"),
        (dict(T=10.0), ValueError, "T must be an integer >= 1"),
        (dict(T=10, t=11), ValueError, r"t must be an integer in 0..T = 0..10"),
        (dict(t=-1), ValueError, "t must be an integer in 0..T"),
        (dict(kind="quadratic"), ValueError, "unknown schedule kind"),
        (dict(beta=0.1), ValueError, "unknown schedule parameters"),
        (dict(tau=float("nan")), ValueError, "must be finite numbers"),
        (dict(image=torch.zeros(2, 28, 28, dtype=torch.uint8)), ValueError, "one image"),
        (dict(image=torch.zeros(28, 28, dtype=torch.int64)), TypeError, "uint8 pixels or a float"),
    ],
)
def test_schedule_explorer_rejects_bad_arguments(kwargs, error, fragment, digit):
    kwargs = {"image": digit, **kwargs}
    with pytest.raises(error, match=fragment):
        ScheduleExplorer(**kwargs)


def test_the_bundle_has_the_widget_view_the_static_html_and_a_short_text(digit):
    w = ScheduleExplorer(digit, T=20, t=3)
    data, _ = w._repr_mimebundle_()
    assert set(data) == {"text/plain", WIDGET_VIEW, "text/html"}
    assert data[WIDGET_VIEW]["model_id"] == w.model_id
    assert data["text/plain"].startswith("ScheduleExplorer(T=20, ") and "t=3" in data["text/plain"]
    assert not re.search(r"0x[0-9a-f]{6,}", data["text/plain"]) and len(data["text/plain"]) < 200


def _model(w=1.5, b=0.3, s2=0.5):
    return LinearGaussianModel(torch.tensor([[w]], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), noise_var=s2)


def test_elbo_explorer_state():
    e = ElboExplorer(_model(), torch.tensor([1.2], dtype=torch.float64), mean=-1.0, log_var=math.log(2.0))
    assert (e.weight, e.bias, e.noise_var, e.x, e.mean, e.log_var) == (1.5, 0.3, 0.5, 1.2, -1.0, math.log(2.0))
    assert e.ranges == {k: list(v) for k, v in ElboExplorer.RANGES.items()}
    data, _ = e._repr_mimebundle_()
    assert set(data) == {"text/plain", WIDGET_VIEW, "text/html"} and data["text/plain"].startswith("ElboExplorer(")


@pytest.mark.parametrize(
    "model, kwargs, fragment",
    [
        (LinearGaussianModel(torch.ones(2, 1), torch.zeros(2), noise_var=0.5), {}, "one-dimensional model"),
        (SimpleNamespace(weight=1.0, bias=0.0, noise_var=0.0), {}, "noise_var is a variance"),
        (SimpleNamespace(weight=float("inf"), bias=0.0, noise_var=1.0), {}, "must be finite"),
        (_model(), {"mean": 3.5}, r"mean must lie in \[-3.0, 3.0\]"),
        (_model(), {"log_var": -5.0}, r"log_var must lie in \[-4.0, 2.0\]"),
    ],
)
def test_elbo_explorer_rejects_bad_arguments(model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ElboExplorer(model, 1.2, **kwargs)


def test_default_digit_is_the_first_mnist_test_image():
    try:
        img = default_digit()
    except RuntimeError as err:  # no MNIST source on this machine
        pytest.skip(str(err))
    assert img.dtype == torch.uint8 and img.shape == (28, 28) and int(img.max()) == 255
