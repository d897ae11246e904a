"""The command line's argument checks and error messages (``python -m ddpm_lib ...`` through ``main``)."""

import json

import pytest
import torch

import ddpm_lib.training.ddpm as training
from ddpm_lib.__main__ import main
from ddpm_lib.checkpoint import read_checkpoint
from ddpm_lib.training import CHECKPOINT_NAME, train
from test_training import TINY


@pytest.fixture
def tiny_preset(monkeypatch):
    """A preset "tiny" (T = 50, a small U-Net) trained on 40 random images instead of MNIST."""
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(training.PRESETS, "tiny", TINY)
    monkeypatch.setattr(training, "load_mnist", lambda split: (images, torch.zeros(40, dtype=torch.long)))
    return images


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_preset):
    return train(TINY, tmp_path / "run", steps=1, images=tiny_preset, progress=False)


def _train(out, *extra):
    return main(["train", "--preset", "tiny", "--out", str(out), "--device", "cpu", "--no-progress", *extra])


def test_train_out_that_is_a_file_is_a_clear_error(tmp_path, tiny_preset, capsys):
    f = tmp_path / "checkpoint.safetensors"
    f.write_bytes(b"x")
    assert _train(f, "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and f"Pass its folder {tmp_path} as --out" in err


def test_train_past_the_steps_asked_for_says_so(tmp_path, tiny_preset, capsys):
    assert _train(tmp_path, "--steps", "4") == 0
    capsys.readouterr()
    assert _train(tmp_path, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "already at step 4, past the 2 steps asked for" in err and "--steps N with N > 4" in err
    assert _train(tmp_path, "--steps", "6") == 0  # training further is a larger total
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME).meta["state"]["step"] == 6


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
@pytest.mark.parametrize("steps", ["0", "-3", "ten"])
def test_steps_below_one_are_refused(tmp_path, command, steps, capsys):
    other = {"train": ["--preset", "tiny", "--out", str(tmp_path)],
             "sample": ["--checkpoint", "mnist", "--n", "1", "--out", str(tmp_path / "s.npz")],
             "evaluate": ["--checkpoint", "mnist", "--metrics", "fd", "--limit", "2", "--n-samples", "2", "--sampler", "ddim"]}[command]
    with pytest.raises(SystemExit) as exc:
        main([command, *other, "--steps", steps])
    assert exc.value.code == 2
    assert "argument --steps:" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_sampler_step_counts_outside_1_to_T_are_errors(tmp_path, tiny_checkpoint, capsys):
    out = str(tmp_path / "s.npz")
    for sampler in ("ddim", "ddpm-strided", "dpm-solver-2m"):
        assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", sampler, "--steps", "51", "--out", out]) == 2
        assert "must be in 1..T = 1..50, got 51" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "ddpm", "--steps", "10", "--out", out]) == 2
    assert "takes all T = 50 steps" in capsys.readouterr().err
    for flag in ("--n", "--batch-size"):
        with pytest.raises(SystemExit):
            main(["sample", "--checkpoint", str(tiny_checkpoint), flag, "0", "--out", out])
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("command", ["sample", "train"])
def test_unknown_device_names_ours(tmp_path, tiny_checkpoint, command, capsys):
    args = {"sample": ["sample", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "s.npz")],
            "train": ["train", "--preset", "tiny", "--out", str(tmp_path / "new"), "--steps", "1"]}[command]
    assert main([*args, "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'tpu'" in err
    assert "cpu (available), cuda or cuda:N (" in err and "mps (" in err
    assert "xla" not in err and "Expected one of" not in err  # not torch's list of device types


def test_info_takes_shipped_names_like_the_other_commands(capsys):
    assert main(["info", "mnist"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["kind"] == "ddpm" and meta["format"] == 1
    assert main(["info", "mnist-classifier"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "classifier"
    assert main(["info", "no-such-model"]) == 2
    assert "no shipped model of that name (shipped: mnist" in capsys.readouterr().err


def test_export_takes_shipped_names_and_refuses_other_kinds(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", "mnist-cpu", "--out", str(out), "--command", "test"]) == 0
    assert read_checkpoint(out).meta["command"] == "test"
    assert main(["export", "--checkpoint", "mnist-classifier", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "not a DDPM" in capsys.readouterr().err


def test_train_classifier_command_measures_and_saves(tmp_path, monkeypatch, capsys):
    import ddpm_lib.data
    import ddpm_lib.training.classifier
    from ddpm_lib.checkpoint import load_classifier

    g = torch.Generator().manual_seed(0)
    fake = {split: (torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (32,), generator=g))
            for split in ("train", "test")}
    for module in (ddpm_lib.data, ddpm_lib.training.classifier):
        monkeypatch.setattr(module, "load_mnist", lambda split: fake[split])
    out = tmp_path / "clf.safetensors"
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert main(["train-classifier", "--out", str(out), "--epochs", "1", "--no-progress"]) == 0
    assert torch.equal(torch.get_rng_state(), before)  # training forks the global generator
    meta = read_checkpoint(out).meta
    assert meta["kind"] == "classifier" and meta["train"]["epochs"] == 1 and meta["command"].startswith("python -m ddpm_lib")
    clf = load_classifier(out)
    predicted = clf(ddpm_lib.data.to_model(fake["test"][0])).argmax(1)
    assert meta["test_accuracy"] == float((predicted == fake["test"][1]).double().mean())  # the accuracy of the saved weights
    assert f"test accuracy: {meta['test_accuracy']:.4f}" in capsys.readouterr().out


def test_evaluate_ode_nll_is_the_library_function(tmp_path, tiny_checkpoint, capsys):
    # `evaluate --metrics ode-nll` writes ode_nll_bits_per_dim's result (prefixed ode_) for the first --limit test
    # digits; on the tiny T = 50 model two images cost a few seconds. Same seed, same images: the same numbers.
    import ddpm_lib.__main__ as cli
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.evaluation.ode_likelihood import ode_nll_bits_per_dim

    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = tmp_path / "m.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ddpm_lib.data.load_mnist", lambda split: (images, torch.zeros(2, dtype=torch.long)))
        assert cli.main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--metrics", "ode-nll", "--limit", "2",
                         "--device", "cpu", "--out", str(out)]) in (0, None)
    got = json.loads(out.read_text())
    want = ode_nll_bits_per_dim(load_model(str(tiny_checkpoint)), images, seed=0, batch_size=16, progress=False)
    assert got["ode_bits_per_dim"] == pytest.approx(want["bits_per_dim"], rel=1e-12)
    assert got["ode_n_images"] == 2


def test_evaluate_names_the_metrics_it_knows(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", "mnist", "--metrics", "ode", "--limit", "2"])
    assert "nll,ode-nll,fd" in str(exc.value)
