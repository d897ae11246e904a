"""Checkpoints: one safetensors file holding tensors and a JSON config, written atomically.

Layout of a checkpoint file (format 1):

* tensors ``model.*`` (the raw weights), ``ema.*`` (the exponential moving average used for
  sampling), ``optim.*`` (AdamW's moments), ``schedule.beta`` (float64, shape ``(T + 1,)``) and
  ``rng.*`` (generator states, uint8), so that training resumes exactly;
* the safetensors metadata entry ``"ddpm_lib"``: a JSON object with ``format``, ``model`` (the
  :class:`~ddpm_lib.models.unet.UNetConfig`), ``schedule`` (its name), ``train`` (the training config),
  ``state`` (step, images seen, wall time) and ``optim`` (AdamW's hyper-parameters).

Writing (:func:`write_atomic`) goes to one temporary file ``NAME.XXXXXXXX.tmp`` in the same folder,
created with the usual umask-respecting mode, fsynced, then renamed over the target with
``os.replace``, so a crash never leaves a half-written checkpoint. A temporary file left by a write
that was killed is removed by the next write of the same target (and, in a run folder, when training
resumes: :func:`remove_stale_temp_files`). ``python -m ddpm_lib info PATH`` (or a shipped name) prints
the JSON. The field ``kind`` (``"ddpm"``, ``"classifier"``, ``"vae"``) says which network a file
holds; :func:`load_model`, :func:`load_classifier` and :func:`load_vae` each refuse the other kinds.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize

from .models.classifier import ClassifierConfig, MnistClassifier
from .models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from .core.schedules import Schedule
from .models.unet import UNet, UNetConfig
from .models.vae import VAE, VAEConfig

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "read_checkpoint",
    "Checkpoint",
    "load_model",
    "LoadedModel",
    "load_classifier",
    "load_noisy_classifier",
    "LoadedNoisyClassifier",
    "export_noisy_classifier",
    "load_vae",
    "export_weights",
    "pretrained_names",
    "resolve_checkpoint",
    "write_atomic",
    "remove_stale_temp_files",
    "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Where the shipped checkpoints live inside the installed package."""

FORMAT = 1
_META_KEY = "ddpm_lib"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` and the JSON-serializable ``meta`` to ``path`` atomically (:func:`write_atomic`).

    Raises:
        TypeError: if ``meta`` is not JSON-serializable.
        ValueError: if ``path`` is an existing folder.
    """
    text = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # serialized here, not with safetensors' save_file: that one writes through a hidden temporary
    # file of its own (".tmpXXXXXX", mode 0600) which a killed write leaves behind
    write_atomic(path, serialize(tensors, metadata={_META_KEY: text}))


_TEMP_SUFFIX = ".tmp"
# the temporary file that safetensors' save_file (used before) wrote through: Rust's tempfile crate
_LEGACY_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def _temp_pattern(path: Path) -> re.Pattern:
    # NAME.<random>.tmp, as write_atomic (and the tempfile.mkstemp of earlier versions) names them
    return re.compile(re.escape(path.name) + r"\.[A-Za-z0-9_]+" + re.escape(_TEMP_SUFFIX))


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace the file ``path`` by ``data`` atomically: a reader sees the old file or the new one, never a part.

    The bytes go to one temporary file ``NAME.XXXXXXXX.tmp`` in ``path``'s folder, created with mode
    ``0o666`` less the umask (like any new file), then fsynced and renamed over ``path`` with
    ``os.replace`` (the folder is fsynced too). On an exception the temporary file is removed; one
    left by a killed process is removed by the next write of ``path`` (a folder is meant to have one
    writer at a time). Missing parent folders are created.

    Raises:
        ValueError: if ``path`` is an existing folder.
        OSError: from the file system (no space, no permission, ...); ``path`` is then unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass a file path to write (e.g. {path / 'model.safetensors'}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = path.parent / f"{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # make the rename itself durable; not every platform can open a folder (Windows cannot)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(path: str | Path, legacy: bool = False) -> list[Path]:
    """Delete the temporary files that interrupted writes of ``path`` left in its folder; return them.

    These are the files ``NAME.XXXXXXXX.tmp`` of :func:`write_atomic`. With ``legacy``, also the
    hidden ``.tmpXXXXXX`` files that earlier versions (through safetensors' ``save_file``) left in a
    run folder; only those that are empty or start like a safetensors file are touched. Call it only
    where no other process is writing ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    own = _temp_pattern(path)
    removed = []
    for p in path.parent.iterdir():
        if own.fullmatch(p.name) or (legacy and _LEGACY_TEMP.fullmatch(p.name) and _looks_like_safetensors(p)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _looks_like_safetensors(p: Path) -> bool:
    # empty (killed before the first byte) or an 8-byte little-endian header length, then "{"
    if not p.is_file() or p.is_symlink():
        return False
    with p.open("rb") as f:
        head = f.read(9)
    return len(head) == 0 or (len(head) == 9 and head[8:9] == b"{")


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`read_checkpoint` returns: all tensors (on the CPU) and the parsed JSON config."""

    tensors: dict[str, torch.Tensor]
    meta: dict

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose names start with ``prefix + "."``, with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a ddpm_lib checkpoint or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m ddpm_lib train --preset mnist-cpu --out DIR`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    if meta_raw is None:
        raise ValueError(f"{path} is a safetensors file but not a ddpm_lib checkpoint (no '{_META_KEY}' metadata).")
    meta = json.loads(meta_raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta.get('format')!r}; this ddpm_lib reads format {FORMAT}.")
    return Checkpoint(tensors, meta)


@dataclass(frozen=True)
class LoadedModel:
    """A network ready to sample from, with what it needs to be interpreted."""

    model: UNet
    schedule: Schedule
    target: str
    meta: dict


def load_model(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the U-Net of a checkpoint, load its ``"ema"`` (default) or ``"model"`` weights, set eval mode.

    Sample with the EMA weights: they are what the training run's sample grids and every number of
    the book come from. The raw weights of the last optimizer step are only in a training run's own
    checkpoint; the shipped files (:func:`export_weights`) hold the EMA weights alone.

    Raises:
        FileNotFoundError, ValueError: from :func:`read_checkpoint`; ``ValueError`` also when the
            stored config or weights do not match this code's architecture, naming the keys and
            shapes that differ, and when ``weights="model"`` is asked of a file without raw weights
            (an exported or shipped one), saying so.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}.")
    ckpt = _read_of_kind(path, "ddpm", "DDPM", "pass a checkpoint written by `python -m ddpm_lib train`")
    if weights == "model" and not ckpt.prefixed("model") and ckpt.prefixed("ema"):
        raise ValueError(
            f"{path} holds only the EMA weights (an exported or shipped file; `export` drops the raw ones), so there "
            f"are no raw 'model' weights to load. Sample with the EMA weights, load_model(..., weights='ema') (the "
            f"default); the raw weights are in the training run's checkpoint, RUN/checkpoint.safetensors."
        )
    config = UNetConfig.from_dict(ckpt.meta["model"])
    model = UNet(config)
    _load_weights(model, ckpt.prefixed(weights), f"{path}: the {weights} weights do not fit UNet({config})")
    schedule = Schedule(ckpt.tensors["schedule.beta"], name=ckpt.meta["schedule"]["name"])
    return LoadedModel(model.to(device).eval(), schedule, ckpt.meta["train"]["target"], ckpt.meta)


def _read_of_kind(path: str | Path, kind: str, label: str, hint: str) -> Checkpoint:
    # read a checkpoint (path or shipped name) and refuse one of another kind, saying what to pass instead
    ckpt = read_checkpoint(resolve_checkpoint(path))
    if _kind(ckpt) != kind:
        raise ValueError(f"{path} is a {_kind(ckpt)!r} checkpoint, not a {label}; {hint}.")
    return ckpt


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    _check_state(module, state, what)
    module.load_state_dict(state)


def _kind(ckpt: Checkpoint) -> str:
    # checkpoints written before the "kind" field existed are DDPMs when they hold a schedule
    return ckpt.meta.get("kind", "ddpm" if "schedule.beta" in ckpt.tensors else "unknown")


def _check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(f"{what}: {detail}.")


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> MnistClassifier:
    """Load an MNIST classifier checkpoint (a path or a shipped name such as ``"mnist-classifier"``), in eval mode.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; ``ValueError`` also if the
            checkpoint is not a classifier's or does not fit the architecture.
    """
    ckpt = _read_of_kind(path, "classifier", "classifier", "pass `mnist-classifier` or a file from `train-classifier`")
    model = MnistClassifier(ClassifierConfig.from_dict(ckpt.meta["classifier"]))
    _load_weights(model, ckpt.prefixed("model"), f"{path}: the weights do not fit the classifier")
    return model.to(device).eval()


@dataclass(frozen=True)
class LoadedNoisyClassifier:
    """A noise-conditional classifier ready to guide, with the schedule of the noise it was trained on."""

    model: NoisyClassifier
    schedule: Schedule
    meta: dict


def load_noisy_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedNoisyClassifier:
    """Load a noise-conditional classifier (a path or a shipped name such as ``"mnist-noisy-classifier"``), in eval mode.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; ``ValueError`` also if the checkpoint is not a
            noise-conditional classifier's (the evaluation classifier ``mnist-classifier`` is not one: it never
            saw noise) or does not fit the architecture.
    """
    ckpt = _read_of_kind(path, "noisy-classifier", "noise-conditional classifier",
                         "guidance needs p(y | x_t, t): pass `mnist-noisy-classifier` or a file from `train-noisy-classifier` "
                         "(the evaluation classifier `mnist-classifier` was trained on clean digits only)")
    model = NoisyClassifier(NoisyClassifierConfig.from_dict(ckpt.meta["classifier"]))
    _load_weights(model, ckpt.prefixed("model"), f"{path}: the weights do not fit the noise-conditional classifier")
    schedule = Schedule(ckpt.tensors["schedule.beta"], name=ckpt.meta["schedule"]["name"])
    return LoadedNoisyClassifier(model.to(device).eval(), schedule, ckpt.meta)


def save_classifier(path: str | Path, model: MnistClassifier, meta: dict) -> Path:
    """Write a classifier checkpoint (``kind: "classifier"``): its weights, its config, and ``meta``
    (``train`` settings, ``test_accuracy``, ``command``), atomically.

    Raises:
        ValueError: if ``meta`` tries to set ``kind`` or ``classifier`` itself.
    """
    if {"kind", "classifier"} & set(meta):
        raise ValueError("save_classifier writes 'kind' and 'classifier' itself; leave them out of meta.")
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"kind": "classifier", "classifier": model.config.to_dict(), **meta})
    return Path(path)


def load_vae(path_or_name: str | Path = "vae-mnist", device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """Load a VAE from a ``train-vae`` checkpoint, an exported weights file, or a shipped name (default ``"vae-mnist"``).

    Returns:
        ``(model, meta)``: the :class:`~ddpm_lib.models.vae.VAE` in eval mode on ``device``, and the file's
        JSON config (``meta["test"]`` holds the test-set bits/dim of an exported file).

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; ``ValueError`` also if the
            checkpoint is not a VAE's or its weights do not fit the stored architecture.
    """
    ckpt = _read_of_kind(path_or_name, "vae", "VAE", "pass `vae-mnist` or a file from `train-vae`")
    model = VAE(VAEConfig.from_dict(ckpt.meta["model"]))
    _load_weights(model, ckpt.prefixed("model"), f"{path_or_name}: the weights do not fit VAE({model.config})")
    return model.to(device).eval(), ckpt.meta


def export_weights(checkpoint: str | Path, out: str | Path, command: str) -> Path:
    """Write a slim copy of a DDPM training checkpoint for shipping: EMA weights, schedule, config.

    The optimizer and RNG states are dropped; ``command`` (the command that trained it) is stored in
    the JSON. :func:`load_model` reads the result like any checkpoint; training cannot resume from it.

    Args:
        checkpoint: a path or the name of a shipped checkpoint.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; ``ValueError`` also if the
            checkpoint is not a DDPM's.
    """
    ckpt = _read_of_kind(checkpoint, "ddpm", "DDPM", "pass a checkpoint written by `python -m ddpm_lib train`")
    tensors = {k: v for k, v in ckpt.tensors.items() if k.startswith("ema.") or k == "schedule.beta"}
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "optim", "lr_scheduler")}
    meta["command"] = command
    meta["exported_from_step"] = ckpt.meta.get("exported_from_step", ckpt.meta.get("state", {}).get("step"))
    save_checkpoint(out, tensors, meta)
    return Path(out)


def export_vae(checkpoint: str | Path, out: str | Path, test: dict) -> Path:
    """Write a slim copy of a ``train-vae`` checkpoint for shipping: float32 weights and the JSON, with ``test`` added.

    Adam's moments and the generator's state are dropped; ``test`` (the test-set bits/dim of
    :func:`ddpm_lib.evaluation.vae_test_metrics`) is stored as ``meta["test"]``.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_checkpoint`; ``ValueError`` also if the checkpoint is not a VAE's.
    """
    ckpt = _read_of_kind(checkpoint, "vae", "VAE", "pass a checkpoint written by `python -m ddpm_lib train-vae`")
    meta = {k: v for k, v in ckpt.meta.items() if k in ("kind", "model", "train", "state", "command")}
    meta["test"] = test
    save_checkpoint(out, {f"model.{k}": v.float() for k, v in ckpt.prefixed("model").items()}, meta)
    return Path(out)


def export_noisy_classifier(checkpoint: str | Path, out: str | Path, test: dict, command: str) -> Path:
    """Write a slim copy of a ``train-noisy-classifier`` checkpoint for shipping: weights, schedule and JSON.

    AdamW's moments and the generator's state are dropped; ``test`` (accuracies on noised test digits,
    :func:`ddpm_lib.training.noisy_accuracy`) is stored as ``meta["test"]`` and ``command`` as ``meta["command"]``.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_noisy_classifier`.
    """
    ckpt = _read_of_kind(checkpoint, "noisy-classifier", "noise-conditional classifier",
                         "pass a checkpoint written by `python -m ddpm_lib train-noisy-classifier`")
    meta = {k: v for k, v in ckpt.meta.items() if k in ("kind", "classifier", "train", "schedule", "epoch", "guides")}
    tensors = {**{f"model.{k}": v for k, v in ckpt.prefixed("model").items()}, "schedule.beta": ckpt.tensors["schedule.beta"]}
    save_checkpoint(out, tensors, {**meta, "test": test, "command": command})
    return Path(out)


def pretrained_names() -> list[str]:
    """Names of the checkpoints shipped in ``ddpm_lib/weights`` (sorted)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """A checkpoint path as given, or the shipped checkpoint of that name.

    Raises:
        FileNotFoundError: if it is neither an existing file nor a shipped name; the message lists the names.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    if str(path_or_name) in pretrained_names():
        return WEIGHTS_DIR / f"{path_or_name}.safetensors"
    raise FileNotFoundError(
        f"no checkpoint at {path_or_name!s} and no shipped model of that name (shipped: "
        f"{', '.join(pretrained_names()) or 'none'}); train one with `python -m ddpm_lib train --preset mnist-cpu --out DIR`."
    )
