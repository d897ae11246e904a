"""Training the MNIST classifier whose features the Fréchet distance uses (chapter "Training a DDPM on MNIST")."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import load_mnist, to_model
from ..devices import pick_device
from ..models.classifier import ClassifierConfig, MnistClassifier

__all__ = ["train_classifier"]


def train_classifier(
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
) -> MnistClassifier:
    """Train the MNIST classifier of :mod:`ddpm_lib.models.classifier` (AdamW, one-cycle learning rate, cross-entropy).

    A few minutes on a CPU, so there is nothing to resume: ``python -m ddpm_lib train-classifier``
    measures the test accuracy and saves the result (:func:`ddpm_lib.checkpoint.save_classifier`). The
    weights are initialised from ``seed`` with the global generator forked (the caller's is left as
    it was); the batch order comes from a generator seeded ``seed``.

    Args:
        images, labels: uint8 ``(N, 28, 28)`` and int64 ``(N,)``; default: the MNIST training set.

    Returns:
        The trained classifier, on the CPU, in eval mode.
    """
    dev = pick_device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(epochs, batch_size, lr, seed, dev, images, labels, progress)


def _train(epochs, batch_size, lr, seed, dev, images, labels, progress) -> MnistClassifier:
    if images is None:
        images, labels = load_mnist("train")
    x_all, y_all = to_model(images).to(dev), labels.to(dev)
    model = MnistClassifier(ClassifierConfig()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps_per_epoch = -(-x_all.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc="classifier", unit="step")
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(x_all.shape[0], generator=gen).split(batch_size):
            idx = idx.to(dev)
            loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return model.cpu().eval()
