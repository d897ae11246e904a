"""Training a DDPM: presets, the loop, periodic checkpoints and samples, exact resumption.

Ho et al. (2020), Algorithm 1: draw ``x0`` from the data, ``t`` uniform on ``1..T`` and
``eps ~ N(0, I)``; form ``xt = q_sample(x0, t, eps)``; take a gradient step on the loss between the
network's output and its target. Book chapter "Training a DDPM on MNIST".

Everything random in the loop comes from one ``torch.Generator`` (batch order, ``t``, ``eps``)
whose state is stored in the checkpoint with the weights, the EMA and AdamW's moments, so that a
run stopped and resumed ends with the same weights as an uninterrupted one (tested on the CPU).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..checkpoint import LoadedModel, read_checkpoint, remove_stale_temp_files, resolve_checkpoint, save_checkpoint
from ..core.forward import q_sample
from ..core.losses import LOSSES
from ..core.schedules import Schedule, cosine_schedule, linear_schedule
from ..core.targets import TARGETS, get_target
from ..core.timesteps import oversample_first_step
from ..data import load_mnist, save_grid, to_model
from ..devices import AdaptiveThreads, pick_device
from ..models.unet import UNet, UNetConfig
from ..sampling.denoisers import schedules_match
from ..sampling.images import generate_images
from .runs import (CHECKPOINT_NAME, batch_indices, check_not_past, comparable, flatten_optimizer, metrics_up_to, run_folder,
                   unflatten_optimizer)

__all__ = ["TrainConfig", "PRESETS", "batch_loss", "drop_labels", "train"]



@dataclass(frozen=True)
class TrainConfig:
    """A training run's settings, stored in its checkpoints' JSON (:meth:`to_json`).

    Attributes:
        model: the U-Net's architecture.
        schedule: the noise schedule (its betas go into the checkpoint).
        target: what the network predicts, a name in :data:`~ddpm_lib.core.targets.TARGETS`.
        loss: ``"simple"`` (:func:`~ddpm_lib.core.losses.simple_loss`), ``"vlb"``, or ``"hybrid"``
            (:func:`~ddpm_lib.core.losses.hybrid_loss`), which is the one for ``model.learn_variance`` and only for it.
        steps: optimizer steps in all (``--steps`` overrides it).
        batch_size: images per step and process (under torchrun with N processes, N * batch_size per step).
        lr, weight_decay, warmup_steps: AdamW's learning rate (linear warm-up, then constant).
        grad_clip: maximum global gradient norm.
        ema_decay: decay of the exponential moving average of the weights.
        seed: seeds the weights and the generator of batches, ``t`` and ``eps``.
        log_every, checkpoint_every, sample_every: intervals in steps.
        sample_steps, sample_count: the DDIM steps and the number of images of the sample grid.
        bf16: bf16 autocast on CUDA (ignored elsewhere).
        label_dropout: for a conditional model (``model.num_classes`` set), the probability that a
            training example's label is replaced by the "no label" class ``num_classes`` (Ho &
            Salimans 2022, Algorithm 1), so that one network learns both the conditional and the
            unconditional denoiser. Dropped in the batch (:func:`drop_labels`), not inside the network.
        init_from: ``None`` (weights initialised from ``seed``) or a DDPM checkpoint (a path or a shipped name)
            whose EMA weights start both the network and its EMA. It must have the same schedule, target and
            architecture (its dropout rate may differ), except that this model may be conditional where that one is
            not: the label
            embedding, which it lacks, then starts at zero, so that training starts from that model exactly
            for every label (the way ``mnist-cfg`` is fine-tuned from ``mnist``). Likewise this model may learn
            its variances where that one does not: the variance channels of the last convolution then start at
            zero (``v = 0``), and the prediction is that model's exactly.
        first_step_fraction: the probability :math:`\\rho` in ``[0, 1)`` that an example's ``t`` is set to 1 (the decoder
            term), so that about that fraction of each batch is drawn there, with importance weights that keep the loss
            an unbiased estimate of the same objective (:func:`~ddpm_lib.core.timesteps.oversample_first_step`); 0 draws
            ``t`` uniformly, exactly as before.
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
    label_dropout: float = 0.0
    init_from: str | None = None
    first_step_fraction: float = 0.0

    FIELDS_ADDED_LATER: ClassVar[dict[str, Any]] = {"first_step_fraction": 0.0}
    """Fields added after runs were written, with the value those runs had (so that they still resume)."""

    def __post_init__(self) -> None:
        get_target(self.target)  # ValueError for an unknown target, listing the known ones
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"TrainConfig.label_dropout is a probability in [0, 1), got {self.label_dropout}.")
        if self.label_dropout > 0 and self.model.num_classes is None:
            raise ValueError("TrainConfig.label_dropout > 0 needs a conditional model: set model.num_classes.")
        if not 0.0 <= self.first_step_fraction < 1.0:
            raise ValueError(f"TrainConfig.first_step_fraction is a probability in [0, 1), got {self.first_step_fraction}.")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}.")
        if (self.loss == "hybrid") != self.model.learn_variance:
            raise ValueError("a network with learned variances trains with loss='hybrid', and the hybrid loss needs one: "
                             f"got loss={self.loss!r} with learn_variance={self.model.learn_variance}.")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "sample_every", "sample_steps", "sample_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")

    def to_json(self) -> dict:
        """The run's settings as JSON, the schedule included (its name and betas ``beta_1..beta_T``, exact in JSON).

        The U-Net's architecture is stored beside it (``model.to_dict()``); a resumed run compares both.
        """
        d = {k: v for k, v in asdict(self).items() if k not in ("model", "schedule")}
        d["schedule"] = {"name": self.schedule.name, "beta": self.schedule.beta[1:].tolist()}
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

# Learned reverse variances (issue "the main model"): the shipped `mnist` network given a second output channel, v of
# Nichol & Dhariwal's eq. 15, which starts at zero, and fine-tuned with their hybrid loss, so the mean keeps training
# with L_simple while the bound trains the variances.
PRESETS["mnist-cpu-lv"] = replace(PRESETS["mnist-cpu"], model=replace(PRESETS["mnist-cpu"].model, learn_variance=True),
                                  target="v", loss="hybrid", steps=6000, lr=5e-4, ema_decay=0.999, init_from="mnist")
# Importance sampling of t for the bound (issue "the main model"): `mnist-lv` fine-tuned further with an eighth of each
# batch at t = 1, the decoder term, which a uniform t visits once in 1000 draws although it is 38% of mnist-lv's bound.
PRESETS["mnist-cpu-lv-is"] = replace(PRESETS["mnist-cpu-lv"], steps=4000, init_from="mnist-lv", first_step_fraction=0.125)
# Its control: the same further steps from `mnist-lv` with a uniform t, so that what the proposal did is measured apart
# from what more training did (shipped as `mnist-lv-control`, trained with --threads 1).
PRESETS["mnist-cpu-lv-control"] = replace(PRESETS["mnist-cpu-lv-is"], first_step_fraction=0.0)
# Classifier-free guidance (Part V): the mnist-cpu network made conditional (with a "no label" class) and fine-tuned
# from the shipped `mnist` (v target) with label dropout 0.1, so that it learns the conditional denoiser and keeps the
# unconditional one.
PRESETS["mnist-cpu-cfg"] = replace(PRESETS["mnist-cpu"], model=replace(PRESETS["mnist-cpu"].model, num_classes=10),
                                   target="v", steps=4000, lr=5e-4, label_dropout=0.1, init_from="mnist")


def batch_loss(
    net: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, config: TrainConfig, bf16: bool = False,
    y: torch.Tensor | None = None, importance_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss of one batch (Ho et al. 2020, Algorithm 1, lines 2-5), a 0-d tensor.

    Forms ``xt = q_sample(x0, t, eps)``, runs ``net(xt, t)`` (``net(xt, t, y)`` for a conditional
    model, ``y`` the batch's int64 labels ``(B,)`` after :func:`drop_labels`) under bf16 autocast if
    ``bf16``, and applies ``config.loss`` to the float32 output with ``config.target`` (and the importance
    weights ``(B,)`` of a non-uniform ``t``, if given). Shared by :func:`train` and the benchmark, so both time
    the same computation.
    """
    xt = q_sample(x0, t, eps, config.schedule)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = net(xt, t) if y is None else net(xt, t, y)
    return LOSSES[config.loss](output.float(), x0, eps, t, config.schedule, config.target, importance_weight)


def drop_labels(y: torch.Tensor, p: float, null_label: int, uniform: torch.Tensor) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (label dropout; Ho & Salimans 2022, Algorithm 1).

    Args:
        y: int64 labels ``(B,)``.
        p: the dropout probability in ``[0, 1)``.
        null_label: the "no label" class (``num_classes`` for :class:`~ddpm_lib.models.unet.UNet`).
        uniform: ``B`` draws from U[0, 1), shape ``(B,)``; label ``i`` is dropped when ``uniform[i] < p``.
            The training loop draws them for the global batch with ``t`` and ``eps`` and splits them
            like those, so N processes drop the same labels as one process with N times the batch.

    Returns:
        An int64 tensor ``(B,)`` (``y`` itself when ``p = 0``).
    """
    if p == 0:
        return y
    return torch.where(uniform.to(y.device) >= p, y, torch.full_like(y, null_label))


def train(
    config: TrainConfig,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    steps: int | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    world_size: int = 1,
    rank: int = 0,
    threads: int | str | None = None,
) -> Path:
    """Train (or resume) a DDPM; write the checkpoint, ``samples.png`` and ``metrics.jsonl`` into ``out_dir``.

    Args:
        config: the run's settings (see :data:`PRESETS`).
        out_dir: the run's folder. If it holds a checkpoint, training resumes from it; the
            checkpoint's config must then equal ``config`` (but for ``steps``).
        device: see :func:`pick_device`.
        steps: total optimizer steps, overriding ``config.steps``.
        images: uint8 training images ``(N, 28, 28)``; default: the 60,000 MNIST training images.
        labels: their int64 labels ``(N,)`` (default: MNIST's, with the default images). Used only
            by a conditional model (``config.model.num_classes`` set), which then needs them.
        progress: show a tqdm progress bar.
        world_size, rank: the number of processes and this one's rank under ``torchrun`` (the
            command line reads them from its environment); each process trains on its slice of the
            global batch, and rank 0 writes the files.
        threads: torch's intra-op CPU threads during the run. ``None`` (the default) leaves them as they are; an
            int ``>= 1`` sets them for the run; ``"auto"`` on the CPU uses an
            :class:`~ddpm_lib.devices.AdaptiveThreads`, updated before the first step and at every log step, so that
            the run uses the cores other processes leave free (on other devices ``"auto"`` sets nothing). The
            caller's thread count is restored on return. Each ``metrics.jsonl`` line records ``threads``, the count
            of the steps it reports. Resumption is exact for a fixed count; with ``"auto"`` the counts depend on the
            machine's load, and torch's CPU kernels may add in another order with another count, so a resumed run
            then matches an uninterrupted one only up to float round-off.

    The global random generator (dropout, weight initialisation) is forked for the run: it is
    seeded with ``config.seed`` (or restored from the checkpoint) inside, and the caller's is left as
    it was.

    Returns:
        The path of the final checkpoint.

    Raises:
        ValueError: if ``out_dir`` is a file, holds a checkpoint of a different configuration or one
            already past ``steps``, or its ``metrics.jsonl`` is corrupt before its last line (a torn
            last line is dropped with a warning).
        RuntimeError, ValueError: from :func:`pick_device`.
        ValueError: if a conditional model has no labels, or the labels do not match the images.
        ValueError: if ``threads`` is none of ``None``, an int ``>= 1`` or ``"auto"``.
    """
    if not (threads is None or threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1)):
        raise ValueError(f"threads must be None, an integer >= 1 or 'auto', got {threads!r}.")
    out = run_folder(out_dir)
    if steps is not None:
        config = replace(config, steps=steps)
    dev = pick_device(None if device is None else str(device))
    callers_threads = torch.get_num_threads()
    try:
        if isinstance(threads, int):
            torch.set_num_threads(threads)
        adaptive = AdaptiveThreads() if threads == "auto" and dev.type == "cpu" else None
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            return _train(config, out, dev, images, labels, progress, world_size, rank, adaptive)
    finally:
        if torch.get_num_threads() != callers_threads:
            torch.set_num_threads(callers_threads)


def _train(config: TrainConfig, out: Path, dev: torch.device, images: torch.Tensor | None, labels: torch.Tensor | None,
           progress: bool, world: int, rank: int, adaptive: AdaptiveThreads | None) -> Path:
    conditional = config.model.num_classes is not None
    if images is None:
        images, mnist_labels = load_mnist("train")
        labels = mnist_labels if labels is None else labels
    if conditional and (labels is None or tuple(torch.as_tensor(labels).shape) != (images.shape[0],)):
        raise ValueError(f"a conditional model (num_classes = {config.model.num_classes}) trains on labelled images: pass "
                         f"labels of shape ({images.shape[0]},), one per image.")
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
    if config.init_from is not None and not ckpt_path.exists():
        _init_from(model, config)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    gen = torch.Generator().manual_seed(config.seed)
    step, seen, wall = 0, 0, 0.0

    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        stored = ckpt.meta
        mine = {"model": config.model.to_dict(), "train": comparable(config.to_json())}
        theirs = {"model": UNetConfig.from_dict(stored["model"]).to_dict(),
                  "train": comparable({**TrainConfig.FIELDS_ADDED_LATER, **stored["train"]})}
        if mine != theirs:
            diff = [f"{sec}.{k}: checkpoint {_short(theirs[sec].get(k))} vs now {_short(mine[sec].get(k))}"
                    for sec in ("model", "train") for k in set(mine[sec]) | set(theirs[sec])
                    if mine[sec].get(k) != theirs[sec].get(k)]
            raise ValueError(
                f"{ckpt_path} was written by a different configuration ({'; '.join(sorted(diff))}). "
                "Resume with the same preset, or pass a new --out folder."
            )
        model.load_state_dict(ckpt.prefixed("model"))
        ema.module.load_state_dict(ckpt.prefixed("ema"))
        ema.n_averaged.copy_(ckpt.tensors["ema_n_averaged"])
        opt.load_state_dict(unflatten_optimizer(ckpt.prefixed("optim"), stored["optim"]))
        sched.load_state_dict(stored["lr_scheduler"])
        gen.set_state(ckpt.tensors["rng.generator"])
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        step, seen, wall = stored["state"]["step"], stored["state"]["images_seen"], stored["state"]["wall_s"]
        check_not_past(ckpt_path, step, config.steps)
        if rank == 0:
            metrics_up_to(metrics_path, step)  # drop log lines written after the checkpoint we resume from

    def save() -> None:
        opt_tensors, groups = flatten_optimizer(opt)
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
        # the EMA network, DDIM (eta = 0) with sample_steps steps, seeded; a conditional model draws the classes in turn
        grid_labels = torch.arange(config.sample_count) % config.model.num_classes if conditional else None
        loaded = LoadedModel(ema.module, config.schedule, config.target, {})
        save_grid(generate_images(loaded, config.sample_count, "ddim", config.sample_steps, 0.0, config.seed + 1,
                                  config.sample_count, labels=grid_labels), out / "samples.png")

    data = to_model(images).to(dev)
    data_labels = torch.as_tensor(labels).to(dev) if conditional else None
    n = data.shape[0]
    use_bf16 = config.bf16 and dev.type == "cuda"
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc="train", unit="step")
    if adaptive is not None and step < config.steps:
        adaptive.update()  # the first measure (a 0.25 s window) before the first step
    t_log, seen_log = time.perf_counter(), seen
    while step < config.steps:
        t0 = time.perf_counter()
        model.train()
        # the global batch (batch_size images per process): a fresh permutation each epoch and all
        # draws from `gen`, identical in every process; each process then takes its own slice, so
        # N processes train exactly like one process with N times the batch (up to float round-off)
        batch = batch_indices(n, seen, config.batch_size * world, config.seed)
        t = torch.randint(1, config.schedule.T + 1, (batch.numel(),), generator=gen)
        eps = torch.randn((batch.numel(), *data.shape[1:]), generator=gen)
        # label dropout's draws, for the global batch too (none without dropout: an unconditional run draws as before)
        u = torch.rand(batch.numel(), generator=gen) if conditional and config.label_dropout > 0 else torch.ones(batch.numel())
        # t = 1 for a fraction of the batch, with importance weights (none without it: a uniform run draws as before)
        weight = None
        if config.first_step_fraction > 0:
            t, weight = oversample_first_step(t, torch.rand(batch.numel(), generator=gen), config.first_step_fraction,
                                              config.schedule.T)
        share = lambda v: None if v is None else v.tensor_split(world)[rank].to(dev)  # noqa: E731  this process's slice
        idx, t, eps, u, weight = (share(v) for v in (batch, t, eps, u, weight))
        x0 = data[idx]
        # labels of a conditional model, each dropped to the null class with probability label_dropout
        y = drop_labels(data_labels[idx], config.label_dropout, config.model.num_classes, u) if conditional else None
        loss = batch_loss(net, x0, t, eps, config, use_bf16, y, weight)
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
                   "images_seen": seen, "wall_s": round(wall, 2), "threads": torch.get_num_threads()}
            t_log, seen_log = now, seen
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if adaptive is not None and step % config.log_every == 0 and step < config.steps:
            adaptive.update()  # the thread count of the next log_every steps (every rank measures for itself)
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


def _init_from(model: UNet, config: TrainConfig) -> None:
    # start from another model's EMA weights; a label embedding that model lacks starts at zero (see TrainConfig.init_from)
    ckpt = read_checkpoint(resolve_checkpoint(config.init_from))
    if ckpt.meta.get("kind", "ddpm") != "ddpm":
        raise ValueError(f"init_from={config.init_from!r} is a {ckpt.meta['kind']!r} checkpoint; start from a DDPM's.")
    theirs = UNetConfig.from_dict(ckpt.meta["model"])
    # every field of the architecture must agree but the label embedding's size and the dropout rate (which the
    # fine-tuning may change: it holds no weights)
    mine_d, theirs_d = config.model.to_dict(), theirs.to_dict()
    differences = [f"{k}: {theirs_d[k]!r} vs {mine_d[k]!r}" for k in mine_d
                   if k not in ("num_classes", "dropout", "learn_variance") and mine_d[k] != theirs_d.get(k)]
    if theirs.learn_variance and not config.model.learn_variance:
        differences.append("learn_variance: True vs False (a network cannot drop its learned variances)")
    if ckpt.meta["train"]["target"] != config.target:
        differences.append(f"target: {ckpt.meta['train']['target']!r} vs {config.target!r}")
    if not schedules_match(Schedule(ckpt.tensors["schedule.beta"]), config.schedule):
        differences.append("schedule: the betas differ")
    if theirs.num_classes not in (None, config.model.num_classes):
        differences.append(f"num_classes: {theirs.num_classes!r} vs {config.model.num_classes!r}")
    if differences:
        raise ValueError(f"init_from={config.init_from!r} does not fit this run ({'; '.join(differences)}); start from a "
                         f"checkpoint of the same architecture, schedule and target.")
    state = ckpt.prefixed("ema")
    if model.label_emb is not None and theirs.num_classes is None:
        state["label_emb.weight"] = torch.zeros_like(model.label_emb.weight)
    if config.model.learn_variance and not theirs.learn_variance:
        # the variance channels start at zero: v = 0, the geometric mean of beta_t and tilde-beta_t (core.variance)
        C = config.model.in_channels
        for name in ("conv_out.weight", "conv_out.bias"):
            state[name] = torch.cat([state[name], torch.zeros_like(state[name][:C])])
    model.load_state_dict(state)


def _short(value) -> str:
    # a config value for an error message: long lists (the betas) summarised
    if isinstance(value, dict) and isinstance(value.get("beta"), list):
        return f"{value.get('name')!r} with T = {len(value['beta'])} betas"
    return repr(value)
