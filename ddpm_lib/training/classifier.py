"""Training the MNIST classifier whose features the Fréchet distance uses (chapter "Training a DDPM on MNIST")."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import save_checkpoint
from ..data import load_mnist, to_model
from ..devices import pick_device
from ..models.classifier import ClassifierConfig, MnistClassifier

__all__ = ["train_classifier"]


def train_classifier(
    out: str | Path,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | None = None,
    command: str = "",
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
) -> Path:
    """Train the MNIST classifier of :mod:`ddpm_lib.models.classifier` (AdamW, cross-entropy) and save it.

    The checkpoint (``kind: "classifier"``) stores the weights, the config, ``command`` and the test
    accuracy measured at the end; it is written once, atomically, when training ends (a few minutes
    on a CPU, so there is nothing to resume).

    Args:
        images, labels: uint8 ``(N, 28, 28)`` and int64 ``(N,)``; default: the MNIST training set.

    Returns:
        The checkpoint's path.
    """
    from ..evaluation.frechet import classifier_accuracy  # evaluation sits beside training: imported when used

    dev = pick_device(device)
    torch.manual_seed(seed)
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
    model = model.cpu().eval()
    test_images, test_labels = load_mnist("test")
    accuracy = classifier_accuracy(model, test_images, test_labels)
    meta = {
        "kind": "classifier",
        "classifier": model.config.to_dict(),
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
        "test_accuracy": accuracy,
        "command": command,
    }
    save_checkpoint(out, {f"model.{k}": v for k, v in model.state_dict().items()}, meta)
    return Path(out)
