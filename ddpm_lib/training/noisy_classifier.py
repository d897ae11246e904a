"""Training the noise-conditional classifier of classifier guidance (chapter "Guidance on MNIST").

Each example is a training digit noised by the forward process of the diffusion model it will guide,
:math:`x_t = \\sqrt{\\bar\\alpha_t}x_0 + \\sqrt{1-\\bar\\alpha_t}\\epsilon` (book eq. ``q-sample``) at a ``t``
drawn uniformly from ``1..T``, and the loss is the cross-entropy of its label (Dhariwal & Nichol 2021, §4:
"trained on noisy images"). The run writes an atomic checkpoint after every epoch and resumes from it,
with the same batches, times and noise as an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import read_checkpoint, save_checkpoint
from ..core.forward import q_sample
from ..core.schedules import Schedule
from ..data import load_mnist, to_model
from ..devices import pick_device
from ..sampling.denoisers import schedules_match
from ..models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from .runs import flatten_optimizer, unflatten_optimizer

__all__ = ["NoisyClassifierTrainConfig", "train_noisy_classifier", "noisy_accuracy"]


@dataclass(frozen=True)
class NoisyClassifierTrainConfig:
    """Settings of :func:`train_noisy_classifier`, stored in its checkpoint.

    Attributes:
        model: the architecture.
        epochs: passes over the training images (each image once per epoch, with a fresh ``t`` and noise).
        batch_size, lr: AdamW's batch and peak learning rate (one-cycle schedule over the whole run).
        seed: seeds the weights, the batch order, ``t`` and the noise.
    """

    model: NoisyClassifierConfig = NoisyClassifierConfig()
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"NoisyClassifierTrainConfig.{name} must be >= 1, got {getattr(self, name)}.")

    def to_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "model"}, "model": self.model.to_dict()}


def train_noisy_classifier(
    config: NoisyClassifierTrainConfig,
    schedule: Schedule,
    path: str | Path,
    device: str | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    meta: dict | None = None,
) -> Path:
    """Train (or resume) a :class:`~ddpm_lib.models.noisy_classifier.NoisyClassifier` on digits noised with ``schedule``.

    Args:
        config: the run's settings.
        schedule: the forward process of the model to be guided (its ``beta`` goes into the checkpoint,
            and guidance refuses a diffusion model of another schedule).
        path: the checkpoint file (``kind: "noisy-classifier"``), rewritten atomically after each epoch;
            an existing one is resumed (it must hold the same settings and schedule).
        images, labels: uint8 ``(N, 28, 28)`` and int64 ``(N,)``; default: the MNIST training set.
        meta: more JSON to store (e.g. the ``command``).

    Returns:
        ``path``.

    Raises:
        ValueError: if ``path`` holds a checkpoint of other settings or another schedule, or of another kind.
    """
    path, dev = Path(path), pick_device(device)
    if images is None:
        images, labels = load_mnist("train")
    x_all, y_all = to_model(images).to(dev), torch.as_tensor(labels).to(dev)
    # as JSON stores it (tuples become lists), so that a resumed run compares like with like
    settings = json.loads(json.dumps({"train": config.to_json(), "schedule": {"name": schedule.name, "T": schedule.T}}))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = NoisyClassifier(config.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    steps_per_epoch = -(-x_all.shape[0] // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)
    epoch = 0
    if path.exists():
        ckpt = read_checkpoint(path)
        stored = {k: ckpt.meta.get(k) for k in settings}
        if ckpt.meta.get("kind") != "noisy-classifier" or stored != settings or \
                not schedules_match(Schedule(ckpt.tensors["schedule.beta"]), schedule):
            raise ValueError(f"{path} holds another run ({ckpt.meta.get('kind')}: {stored}); resume with the same "
                             f"settings and diffusion model, or write to a new file.")
        model.load_state_dict(ckpt.prefixed("model"))
        opt.load_state_dict(unflatten_optimizer(ckpt.prefixed("optim"), ckpt.meta["optim"]))
        sched.load_state_dict(ckpt.meta["lr_scheduler"])
        gen.set_state(ckpt.tensors["rng.generator"])
        epoch = ckpt.meta["epoch"]
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=epoch * steps_per_epoch, disable=not progress,
               desc="noisy classifier", unit="step")
    while epoch < config.epochs:
        model.train()
        for idx in torch.randperm(x_all.shape[0], generator=gen).split(config.batch_size):
            t = torch.randint(1, schedule.T + 1, (idx.numel(),), generator=gen)
            eps = torch.randn((idx.numel(), 1, 28, 28), generator=gen)
            idx, t = idx.to(dev), t.to(dev)
            xt = q_sample(x_all[idx], t, eps.to(dev), schedule)
            loss = torch.nn.functional.cross_entropy(model(xt, t), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch += 1
        opt_tensors, groups = flatten_optimizer(opt)
        save_checkpoint(path, {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors,
                               "schedule.beta": schedule.beta, "rng.generator": gen.get_state()},
                        {"kind": "noisy-classifier", "classifier": config.model.to_dict(), **settings, "epoch": epoch,
                         "optim": groups, "lr_scheduler": sched.state_dict(), **(meta or {})})
    bar.close()
    return path


@torch.no_grad()
def noisy_accuracy(classifier: NoisyClassifier, schedule: Schedule, images: torch.Tensor, labels: torch.Tensor,
                   ts: list[int], seed: int = 0, batch_size: int = 500) -> dict[int, float]:
    """The classifier's accuracy on ``images`` noised to each ``t`` in ``ts`` (one noise draw per image, seeded).

    Args:
        classifier: on the CPU, in eval mode (as :func:`~ddpm_lib.checkpoint.load_noisy_classifier` returns it).
        images, labels: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.
        ts: timesteps in ``1..T``; the noise of ``t`` comes from a generator seeded ``seed + t``.

    Returns:
        ``{t: accuracy in [0, 1]}``.
    """
    x0 = to_model(images)
    out = {}
    for t_value in ts:
        gen = torch.Generator().manual_seed(seed + t_value)
        correct = 0
        for start in range(0, x0.shape[0], batch_size):
            x = x0[start : start + batch_size]
            t = torch.full((x.shape[0],), t_value, dtype=torch.long)
            xt = q_sample(x, t, torch.randn(x.shape, generator=gen), schedule)
            correct += int((classifier(xt, t).argmax(1) == labels[start : start + batch_size]).sum())
        out[t_value] = correct / x0.shape[0]
    return out
