"""Where and how a network runs: choosing the device (the one place that knows device names and what this machine
has), finding a network's device, and eval mode that leaves the caller's network as it was."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["pick_device", "model_device", "eval_mode"]


_DEVICE_NAME = re.compile(r"(cpu|mps)(:0)?|cuda(:[0-9]+)?")


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), else CUDA, else MPS, else the CPU.

    Raises:
        ValueError: if ``name`` is none of those forms; the message lists them and which are available.
        RuntimeError: if the named device is not available here (or ``cuda:N`` is past the last GPU).
    """
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    name = str(name).strip()
    if not _DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; the devices are {_device_menu()}.")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= n > 0:
            raise RuntimeError(f"device {name!r} was asked for, but this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}.")
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (dev.type == "mps" and not torch.backends.mps.is_available()):
        raise RuntimeError(f"device {name!r} was asked for, but it is not available here; the devices are {_device_menu()}.")
    return dev


def _device_menu() -> str:
    # the accepted device names and whether each is available on this machine
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = f"available: {n} GPU(s), cuda:0..cuda:{n - 1}" if n else "not available here"
    mps = "available" if torch.backends.mps.is_available() else "not available here"
    return f"cpu (available), cuda or cuda:N ({cuda}), mps ({mps})"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a network's weights live on (its first parameter's or buffer's; the CPU for one with neither).

    Sampling and evaluation run a network where it is and never move the caller's model.
    """
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode (dropout off) inside the block, and give every submodule its own mode back after.

    Sampling and evaluation use it so that they never change the mode of the caller's network.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
