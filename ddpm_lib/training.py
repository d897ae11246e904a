"""Training a DDPM: presets, the loop, periodic checkpoints and samples, exact resumption.

Ho et al. (2020), Algorithm 1: draw ``x0`` from the data, ``t`` uniform on ``1..T`` and
``eps ~ N(0, I)``; form ``xt = q_sample(x0, t, eps)``; take a gradient step on the loss between the
network's output and its target. Book chapter "Training a DDPM on MNIST".

Also the two other networks' training loops: :func:`train_classifier` (the MNIST classifier of
the Fréchet distance) and :func:`train_vae` (the VAE of Part I, with :class:`VAETrainConfig`).

Everything random in the loop comes from one ``torch.Generator`` (batch order, ``t``, ``eps``)
whose state is stored in the checkpoint with the weights, the EMA and AdamW's moments, so that a
run stopped and resumed ends with the same weights as an uninterrupted one (tested on the CPU).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, remove_stale_temp_files, save_checkpoint, write_atomic
from .classifier import ClassifierConfig, MnistClassifier
from .data import load_mnist, save_grid, to_model, to_uint8
from .forward import q_sample
from .losses import simple_loss, vlb_loss
from .parameterizations import TARGETS
from .samplers import ddim_step, ddim_timesteps, model_denoiser, clip_denoiser, sample
from .schedules import Schedule, cosine_schedule, linear_schedule
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig, bits_per_dim, elbo_terms

__all__ = ["TrainConfig", "PRESETS", "batch_loss", "pick_device", "train", "train_classifier", "LOSSES", "CHECKPOINT_NAME",
           "VAETrainConfig", "train_vae"]

LOSSES = {"simple": simple_loss, "vlb": vlb_loss}
CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """A training run's settings; stored (but for ``schedule``, stored as tensors) in its checkpoints.

    Attributes:
        model: the U-Net's architecture.
        schedule: the noise schedule (its betas go into the checkpoint).
        target: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        loss: ``"simple"`` (:func:`~ddpm_lib.losses.simple_loss`) or ``"vlb"``.
        steps: optimizer steps in all (``--steps`` overrides it).
        batch_size: images per step and process (under torchrun with N processes, N * batch_size per step).
        lr, weight_decay, warmup_steps: AdamW's learning rate (linear warm-up, then constant).
        grad_clip: maximum global gradient norm.
        ema_decay: decay of the exponential moving average of the weights.
        seed: seeds the weights and the generator of batches, ``t`` and ``eps``.
        log_every, checkpoint_every, sample_every: intervals in steps.
        sample_steps, sample_count: the DDIM steps and the number of images of the sample grid.
        bf16: bf16 autocast on CUDA (ignored elsewhere).
    """

    model: UNetConfig
    schedule: Schedule = field(default_factory=linear_schedule)
    target: str = "eps"
    loss: str = "simple"
    steps: int = 10000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    sample_every: int = 2000
    sample_steps: int = 50
    sample_count: int = 64
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}.")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "sample_every", "sample_steps", "sample_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")

    def to_json(self) -> dict:
        """The JSON part of the config (the schedule is stored as a tensor plus its name)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("model", "schedule")}
        return d


PRESETS: dict[str, TrainConfig] = {
    # The book's main model, meant for a GPU (runs anywhere, slowly on a CPU).
    "mnist": TrainConfig(
        model=UNetConfig(channels=(64, 128, 256), num_res_blocks=2, attention_heads=4, dropout=0.1),
        schedule=linear_schedule(1000),
        steps=40000,
        batch_size=128,
        lr=2e-4,
        ema_decay=0.9995,
        checkpoint_every=1000,
        sample_every=5000,
    ),
    # Sized to train on 2 CPU cores in about 10 minutes.
    "mnist-cpu": TrainConfig(
        model=UNetConfig(channels=(16, 32, 64), num_res_blocks=1, attention_heads=4),
        schedule=cosine_schedule(1000),
        steps=2000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.995,
        log_every=25,
        checkpoint_every=250,
        sample_every=1000,
        sample_steps=50,
    ),
}


def batch_loss(
    net: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, config: TrainConfig, bf16: bool = False
) -> torch.Tensor:
    """The training loss of one batch (Ho et al. 2020, Algorithm 1, lines 2-5), a 0-d tensor.

    Forms ``xt = q_sample(x0, t, eps)``, runs ``net(xt, t)`` (under bf16 autocast if ``bf16``) and
    applies ``config.loss`` to the float32 output with ``config.target``. Shared by :func:`train`
    and the benchmark, so both time the same computation.
    """
    xt = q_sample(x0, t, eps, config.schedule)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = net(xt, t)
    return LOSSES[config.loss](output.float(), x0, eps, t, config.schedule, config.target)


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


def _run_folder(out_dir: str | Path) -> Path:
    """Create the run folder ``out_dir`` if needed; return it as a path.

    Raises:
        ValueError: if ``out_dir``, or a folder above it, is an existing file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        hint = f"its folder {out.parent}" if out.name == CHECKPOINT_NAME else "a folder (a new one, or a run folder to resume)"
        raise ValueError(f"the run folder {out} is an existing file; a run folder holds {CHECKPOINT_NAME}, samples.png "
                         f"and metrics.jsonl. Pass {hint} as --out.")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"cannot create the run folder {out}: {blocker} is an existing file, not a folder.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_not_past(path: Path, step: int, steps: int) -> None:
    """Refuse to resume a run that is already past the ``steps`` asked for (it would train nothing).

    Raises:
        ValueError: if ``step > steps``, saying how to train further.
    """
    if step > steps:
        raise ValueError(f"{path} is already at step {step}, past the {steps} steps asked for, so there is nothing to "
                         f"train. --steps is the run's total: pass --steps N with N > {step} to train further, or a new "
                         "--out folder for a shorter run.")


def _metrics_up_to(path: Path, step: int) -> None:
    """Keep the records of the log ``path`` (JSON lines) up to ``step``: those written after the checkpoint go.

    A torn last line (a write cut short by a kill) is dropped with a warning naming the file. The
    log is rewritten atomically, and only if something changed.

    Raises:
        ValueError: for a line before the last that is not a JSON record with an integer ``"step"``,
            naming the file and the line.
    """
    if not path.exists():
        return
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    kept = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError('not an object with an integer "step"')
        except ValueError as err:
            if i == last:
                warnings.warn(f"{path}: dropped its last line, {len(line)} characters cut short (a write was "
                              f"interrupted): {line[:60]!r}", stacklevel=3)
                continue
            raise ValueError(f"{path}, line {i + 1}: not a metrics record ({err}): {line[:80]!r}. The log is corrupt "
                             f"there: fix or delete that line (or move {path.name} away to start a new log), then "
                             "resume again.") from None
        if rec["step"] <= step:
            kept.append(line)
    new = "".join(ln + "\n" for ln in kept)
    if new != text:
        write_atomic(path, new.encode())


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": torch.as_tensor(v) for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": groups}


def _comparable(meta_train: dict) -> dict:
    return {k: v for k, v in meta_train.items() if k != "steps"}


@lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    # a pure function of (seed, epoch), so a resumed run draws the same order; cached so that a
    # training loop computes it once per epoch, not once per step
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def _batch_indices(n: int, position: int, size: int, seed: int) -> torch.Tensor:
    """Indices of the batch that starts ``position`` images into the run (at most ``size``; it ends with the epoch)."""
    epoch, offset = divmod(position, n)
    return _epoch_permutation(n, seed, epoch)[offset : offset + size]


def train(
    config: TrainConfig,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    steps: int | None = None,
    images: torch.Tensor | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a DDPM; write the checkpoint, ``samples.png`` and ``metrics.jsonl`` into ``out_dir``.

    Args:
        config: the run's settings (see :data:`PRESETS`).
        out_dir: the run's folder. If it holds a checkpoint, training resumes from it; the
            checkpoint's config must then equal ``config`` (but for ``steps``).
        device: see :func:`pick_device`.
        steps: total optimizer steps, overriding ``config.steps``.
        images: uint8 training images ``(N, 28, 28)``; default: the 60,000 MNIST training images.
        progress: show a tqdm progress bar.

    Returns:
        The path of the final checkpoint.

    Raises:
        ValueError: if ``out_dir`` is a file, holds a checkpoint of a different configuration or one
            already past ``steps``, or its ``metrics.jsonl`` is corrupt before its last line (a torn
            last line is dropped with a warning).
        RuntimeError, ValueError: from :func:`pick_device`.
    """
    out = _run_folder(out_dir)
    if steps is not None:
        config = replace(config, steps=steps)
    # torchrun: one process per device; each takes its slice of the global batch (see below)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    dev = pick_device(None if device is None else str(device))
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    ckpt_path = out / CHECKPOINT_NAME
    metrics_path = out / "metrics.jsonl"
    if rank == 0:  # what writes killed before their rename left behind
        remove_stale_temp_files(ckpt_path, legacy=True)
        remove_stale_temp_files(metrics_path)

    torch.manual_seed(config.seed)
    model = UNet(config.model).to(dev)
    net = DistributedDataParallel(model) if world > 1 else model
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    gen = torch.Generator().manual_seed(config.seed)
    step, seen, wall = 0, 0, 0.0

    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        stored = ckpt.meta
        mine = {"model": config.model.to_dict(), "train": _comparable(config.to_json())}
        theirs = {"model": stored["model"], "train": _comparable(stored["train"])}
        if mine != theirs or not torch.equal(ckpt.tensors["schedule.beta"], config.schedule.beta):
            diff = [f"{sec}.{k}: checkpoint {theirs[sec].get(k)!r} vs now {mine[sec].get(k)!r}"
                    for sec in ("model", "train") for k in set(mine[sec]) | set(theirs[sec])
                    if mine[sec].get(k) != theirs[sec].get(k)]
            if not torch.equal(ckpt.tensors["schedule.beta"], config.schedule.beta):
                diff.append("schedule: the betas differ")
            raise ValueError(
                f"{ckpt_path} was written by a different configuration ({'; '.join(sorted(diff))}). "
                "Resume with the same preset, or pass a new --out folder."
            )
        model.load_state_dict(ckpt.prefixed("model"))
        ema.module.load_state_dict(ckpt.prefixed("ema"))
        ema.n_averaged.copy_(ckpt.tensors["ema_n_averaged"])
        opt.load_state_dict(_unflatten_optimizer(ckpt.prefixed("optim"), stored["optim"]))
        sched.load_state_dict(stored["lr_scheduler"])
        gen.set_state(ckpt.tensors["rng.generator"])
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        step, seen, wall = stored["state"]["step"], stored["state"]["images_seen"], stored["state"]["wall_s"]
        _check_not_past(ckpt_path, step, config.steps)
        if rank == 0:
            _metrics_up_to(metrics_path, step)  # drop log lines written after the checkpoint we resume from

    def save() -> None:
        opt_tensors, groups = _flatten_optimizer(opt)
        tensors = {
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"ema.{k}": v for k, v in ema.module.state_dict().items()},
            "ema_n_averaged": ema.n_averaged,
            **opt_tensors,
            "schedule.beta": config.schedule.beta,
            "rng.generator": gen.get_state(),
            "rng.torch": torch.get_rng_state(),
        }
        meta = {
            "kind": "ddpm",
            "model": config.model.to_dict(),
            "schedule": {"name": config.schedule.name, "T": config.schedule.T},
            "train": config.to_json(),
            "state": {"step": step, "images_seen": seen, "wall_s": wall},
            "optim": groups,
            "lr_scheduler": sched.state_dict(),
        }
        save_checkpoint(ckpt_path, tensors, meta)

    def write_samples() -> None:
        denoiser = clip_denoiser(model_denoiser(ema.module.eval(), config.schedule, config.target))
        g = torch.Generator().manual_seed(config.seed + 1)
        x_T = torch.randn((config.sample_count, 1, 28, 28), generator=g).to(dev)
        x0 = sample(denoiser, config.schedule, partial(ddim_step, eta=0.0), x_T,
                    ddim_timesteps(config.schedule.T, config.sample_steps), g)
        save_grid(to_uint8(x0), out / "samples.png")

    data = to_model(load_mnist("train")[0] if images is None else images).to(dev)
    n = data.shape[0]
    use_bf16 = config.bf16 and dev.type == "cuda"
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc="train", unit="step")
    t_log, seen_log = time.perf_counter(), seen
    while step < config.steps:
        t0 = time.perf_counter()
        model.train()
        # the global batch (batch_size images per process): a fresh permutation each epoch and all
        # draws from `gen`, identical in every process; each process then takes its own slice, so
        # N processes train exactly like one process with N times the batch (up to float round-off)
        batch = _batch_indices(n, seen, config.batch_size * world, config.seed)
        t = torch.randint(1, config.schedule.T + 1, (batch.numel(),), generator=gen)
        eps = torch.randn((batch.numel(), *data.shape[1:]), generator=gen)
        idx, t, eps = (v.tensor_split(world)[rank].to(dev) for v in (batch, t, eps))
        x0 = data[idx]
        loss = batch_loss(net, x0, t, eps, config, use_bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        ema.update_parameters(model)
        step += 1
        seen += batch.numel()
        wall += time.perf_counter() - t0
        bar.update(1)
        if world > 1 and (step % config.log_every == 0 or step == config.steps):
            dist.all_reduce(loss := loss.detach().clone(), op=dist.ReduceOp.AVG)  # log the global mean
        if rank == 0 and (step % config.log_every == 0 or step == config.steps):
            now = time.perf_counter()
            rec = {"step": step, "loss": round(loss.item(), 6), "grad_norm": round(float(grad_norm), 4),
                   "lr": sched.get_last_lr()[0], "images_per_s": round((seen - seen_log) / (now - t_log), 2),
                   "images_seen": seen, "wall_s": round(wall, 2)}
            t_log, seen_log = now, seen
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        # samples before the checkpoint: a run killed between the two redraws them when it resumes
        if rank == 0 and (step % config.sample_every == 0 or step == config.steps):
            write_samples()
        if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps):
            save()
    bar.close()
    if rank == 0 and not ckpt_path.exists():  # steps was already reached: nothing trained, but leave a checkpoint
        save()
    if rank == 0 and not (out / "samples.png").is_file():  # e.g. a run of an older version killed before drawing them
        write_samples()
    if own_group:
        dist.barrier()
        dist.destroy_process_group()
    return ckpt_path


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
    """Train the MNIST classifier of :mod:`ddpm_lib.classifier` (AdamW, cross-entropy) and save it.

    The checkpoint (``kind: "classifier"``) stores the weights, the config, ``command`` and the test
    accuracy measured at the end; it is written once, atomically, when training ends (a few minutes
    on a CPU, so there is nothing to resume).

    Args:
        images, labels: uint8 ``(N, 28, 28)`` and int64 ``(N,)``; default: the MNIST training set.

    Returns:
        The checkpoint's path.
    """
    from .evaluation import classifier_accuracy

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


# --- the VAE of Part I (chapter "The variational autoencoder"; the network and its ELBO are ddpm_lib.vae) ---


@dataclass(frozen=True)
class VAETrainConfig:
    """Settings of a VAE training run, stored in its checkpoint's JSON.

    Attributes:
        model: the architecture.
        steps: optimizer steps in all.
        batch_size: images per step.
        lr: Adam's peak learning rate.
        lr_decay_steps: the learning rate follows a half cosine from ``lr`` to ``lr / 10`` over
            this many steps, then stays at ``lr / 10``. It does not depend on ``steps``, so that a run
            extended with a larger ``--steps`` continues the same schedule.
        seed: seeds the weights and the generator of batch order and ``eps``.
        checkpoint_every: steps between checkpoints.

    Raises:
        ValueError: for a non-positive setting.
    """

    model: VAEConfig = VAEConfig()
    steps: int = 12000
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay_steps: int = 12000
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "lr_decay_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAETrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"VAETrainConfig.lr must be > 0, got {self.lr}.")

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def _lr_at(step: int, config: VAETrainConfig) -> float:
    return config.lr * (0.55 + 0.45 * math.cos(math.pi * min(step, config.lr_decay_steps) / config.lr_decay_steps))


def train_vae(
    config: VAETrainConfig,
    out_dir: str | Path,
    steps: int | None = None,
    images: torch.Tensor | None = None,
    progress: bool = True,
    command: str = "",
    export: str | Path | None = None,
    test_images: torch.Tensor | None = None,
) -> Path:
    """Train (or resume) the VAE on uint8 ``images`` (default: the 60,000 MNIST training images), on the CPU.

    Each step draws a batch (a fresh permutation per epoch), ``eps ~ N(0, I)``, and takes an Adam step
    on the negative ELBO in nats per image (:func:`ddpm_lib.vae.elbo_terms`). The checkpoint
    ``out_dir/checkpoint.safetensors`` (written atomically by ``ddpm_lib.checkpoint.save_checkpoint``)
    holds the weights, Adam's moments and the generator's state, so a stopped run resumes where it
    stopped. Its JSON holds the config, the step, the wall time and ``command``.

    Args:
        config: the run's settings; when resuming, must equal the stored ones (but for ``steps``).
        out_dir: the run folder.
        steps: total steps, overriding ``config.steps``.
        images: uint8 ``(N, 28, 28)`` training images.
        progress: show a tqdm bar.
        command: the command line that started the run (stored in the JSON).
        export: if given, also write a weights-only file there (float32 weights and the JSON,
            including the test-set bits/dim when ``test_images`` or MNIST's test set is available).
        test_images: uint8 test images for the exported file's bits/dim (default: the MNIST test set).

    Returns:
        The path of the checkpoint.

    Raises:
        ValueError: if ``out_dir`` is a file or holds a checkpoint of another configuration or one
            already past ``steps``.
    """
    from .evaluation import evaluate_vae

    if steps is not None:
        config = replace(config, steps=steps)
    out = _run_folder(out_dir)
    path = out / CHECKPOINT_NAME
    remove_stale_temp_files(path, legacy=True)
    torch.manual_seed(config.seed)
    model = VAE(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    step, wall = 0, 0.0
    if path.exists():
        ckpt = read_checkpoint(path)
        stored, mine = ckpt.meta["train"], config.to_json()
        if _comparable(stored) != _comparable(mine):
            raise ValueError(f"{path} was written by another configuration ({stored} vs {mine}); use a new --out folder.")
        model.load_state_dict(ckpt.prefixed("model"))
        opt.load_state_dict(_unflatten_optimizer(ckpt.prefixed("optim"), ckpt.meta["optim"]))
        gen.set_state(ckpt.tensors["rng.generator"])
        step, wall = ckpt.meta["state"]["step"], ckpt.meta["state"]["wall_s"]
        _check_not_past(path, step, config.steps)

    def save() -> None:
        opt_tensors, groups = _flatten_optimizer(opt)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors, "rng.generator": gen.get_state()}
        meta = {"kind": "vae", "model": config.model.to_dict(), "train": config.to_json(), "optim": groups,
                "state": {"step": step, "wall_s": round(wall, 2)}, "command": command}
        save_checkpoint(path, tensors, meta)

    data = to_model(load_mnist("train")[0] if images is None else images)
    n = data.shape[0]
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train-vae", unit="step")
    while step < config.steps:
        t0 = time.perf_counter()
        model.train()
        x = data[_batch_indices(n, step * config.batch_size, config.batch_size, config.seed)]
        eps = torch.randn((x.shape[0], config.model.latent_dim), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = -elbo_terms(model, x, eps).elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        wall += time.perf_counter() - t0
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(bits_per_dim=f"{float(bits_per_dim(loss.item())):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
    bar.close()
    if not path.exists():
        save()
    if export is not None:
        test = load_mnist("test")[0] if test_images is None else test_images
        terms = evaluate_vae(model, test, seed=0)
        nll = -terms.elbo
        meta = {"kind": "vae", "model": config.model.to_dict(), "train": config.to_json(),
                "state": {"step": step, "wall_s": round(wall, 2)}, "command": command,
                "test": {"images": int(test.shape[0]), "eval_seed": 0,
                         "bits_per_dim": round(float(bits_per_dim(nll.mean())), 5),
                         "bits_per_dim_stderr": round(float(bits_per_dim(nll.std() / math.sqrt(nll.numel()))), 5)}}
        save_checkpoint(export, {f"model.{k}": v.float() for k, v in model.state_dict().items()}, meta)
    return path
