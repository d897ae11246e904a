"""Guidance on trained networks: the noise-conditional classifier, the guided denoisers, init_from, the CLI and the sweep.

* classifier_log_likelihood_grad is the gradient of log softmax at the label (checked against a closed form for a
  linear classifier), and works under no_grad;
* classifier_guidance adds s (1 - alpha_bar_t) / sqrt(alpha_bar_t) times it to x0_hat (Tweedie), at scale 0 is the
  denoiser itself, and refuses a negative scale or a denoiser without a schedule;
* classifier_free_denoiser is the g = w + 1 mix of the network given the label and given the "no label" class;
  classifier_guided_denoiser refuses a conditional model or a classifier of another schedule; labels outside 0..9
  are refused with the label named;
* init_from starts a conditional model exactly at the unconditional checkpoint for every label, and refuses one
  of another architecture;
* the noisy classifier's training resumes to the same weights as an uninterrupted run;
* `sample --class-labels` writes the labels into the npz and refuses the bad combinations; the sweep runs end to
  end on a small n and resumes from its cache.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from ddpm_lib.__main__ import _parse_class_labels, main
from ddpm_lib.checkpoint import LoadedModel, LoadedNoisyClassifier, load_model, load_noisy_classifier, read_checkpoint
from ddpm_lib.core.schedules import cosine_schedule, linear_schedule
from ddpm_lib.core.targets import score_from_x0
from ddpm_lib.models import NoisyClassifier, NoisyClassifierConfig, UNet, UNetConfig
from ddpm_lib.sampling import (check_class_labels, classifier_free_denoiser, classifier_guidance, classifier_guided_denoiser,
                               classifier_log_likelihood_grad, denoiser_from_score, generate_images, model_denoiser)
from ddpm_lib.training.ddpm import PRESETS, TrainConfig, _init_from
from ddpm_lib.training.noisy_classifier import NoisyClassifierTrainConfig, train_noisy_classifier

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULE = cosine_schedule(1000)


# --- the classifier's gradient and the classifier-guidance wrapper ---------------------------------------------

def test_classifier_gradient_is_log_softmax_s_for_a_linear_classifier():
    # logits = W x (+ nothing from t): grad_x log softmax(W x)_y = W_y - sum_k p_k W_k, in closed form
    g = torch.Generator().manual_seed(0)
    W = torch.randn(10, 6, generator=g, dtype=torch.float64)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 3, 1])
    grad = classifier_log_likelihood_grad(lambda z, t: z @ W.T, y)
    with torch.no_grad():  # the sampling loop runs under no_grad; the gradient must still be computed
        got = grad(x, torch.ones(5, dtype=torch.long))
    p = torch.softmax(x @ W.T, dim=-1)
    expected = W[y] - p @ W
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)  # float64 round-off of a 6x10 product
    with pytest.raises(ValueError, match="one label in 0..9 per image"):
        classifier_log_likelihood_grad(lambda z, t: z @ W.T, torch.tensor([0, 10, 1, 1, 1]))(x, torch.ones(5, dtype=torch.long))


def test_classifier_guidance_adds_the_tweedie_scaled_gradient():
    g = torch.Generator().manual_seed(1)
    base = denoiser_from_score(lambda x, t: -x, SCHEDULE)  # the score of N(0, I) at every t
    grad = lambda x, t: torch.ones_like(x)  # a constant "classifier gradient"
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    s = 2.5
    guided = classifier_guidance(base, grad, scale=s)
    ab = SCHEDULE.alpha_bar[t].double()[:, None]
    expected = base(x, t) + s * (1 - ab) / ab.sqrt()  # x0_hat + s (1 - alpha_bar) / sqrt(alpha_bar) * grad
    assert torch.allclose(guided(x, t), expected, rtol=1e-12, atol=0)
    # the guided score is the score plus s times the gradient (Dhariwal & Nichol's eq. 11), read back by Tweedie
    assert torch.allclose(score_from_x0(x, t, guided(x, t), SCHEDULE), -x + s, rtol=0, atol=1e-9)
    assert torch.equal(classifier_guidance(base, grad, scale=0.0)(x, t), base(x, t))
    assert guided.schedule is SCHEDULE
    # planted: the standard deviation sqrt(1 - alpha_bar) where the variance belongs moves x0_hat visibly
    wrong = base(x, t) + s * (1 - ab).sqrt() / ab.sqrt()
    assert (wrong - guided(x, t)).abs().max() > 0.1
    with pytest.raises(ValueError, match="must be >= 0"):
        classifier_guidance(base, grad, scale=-1.0)
    with pytest.raises(ValueError, match="carries its schedule"):
        classifier_guidance(lambda x, t: x, grad, scale=1.0)


# --- the guided denoisers of checkpoints --------------------------------------------------------------------

def _conditional(seed=0):
    torch.manual_seed(seed)
    model = UNet(UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2, num_classes=10)).eval()
    for p in model.parameters():  # the output convolution starts at zero: give every weight a value
        torch.nn.init.normal_(p, std=0.1)
    return LoadedModel(model, linear_schedule(50), "eps", {})


def test_classifier_free_denoiser_mixes_the_label_and_the_null_label():
    loaded = _conditional()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 20, 49])
    y = torch.tensor([1, 7, 0])
    with torch.no_grad():
        cond = model_denoiser(loaded.model, loaded.schedule, "eps", y)(x, t)
        uncond = model_denoiser(loaded.model, loaded.schedule, "eps", torch.full_like(y, 10))(x, t)
        for g in (0.0, 1.0, 3.0):
            got = classifier_free_denoiser(loaded, y, guidance_scale=g)(x, t)
            assert torch.allclose(got, g * cond + (1 - g) * uncond, rtol=0, atol=1e-5)  # float32 of a two-term sum
        assert torch.equal(classifier_free_denoiser(loaded, y, guidance_scale=1.0)(x, t), cond)
    with pytest.raises(ValueError, match="class label 10 is outside 0..9"):
        classifier_free_denoiser(loaded, torch.tensor([10]), guidance_scale=2.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        classifier_free_denoiser(loaded, y, guidance_scale=-0.5)
    with pytest.raises(ValueError, match="needs a conditional model"):
        classifier_free_denoiser(load_model("mnist"), y, guidance_scale=2.0)


def test_classifier_guided_denoiser_refuses_what_it_cannot_guide():
    mnist = load_model("mnist")
    classifier = LoadedNoisyClassifier(NoisyClassifier().eval(), mnist.schedule, {})
    y = torch.tensor([3, 4])
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        same = classifier_guided_denoiser(mnist, classifier, y, guidance_scale=0.0)(x, t)
        # scale 0 goes through Tweedie and back: float32 round-off of x_t / sqrt(alpha_bar_t), |x_t| < 5, alpha_bar > 0.02
        assert torch.allclose(same, model_denoiser(mnist.model, mnist.schedule, mnist.target)(x, t), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="this one is conditional"):
        classifier_guided_denoiser(_conditional(), classifier, y, guidance_scale=1.0)
    other = LoadedNoisyClassifier(classifier.model, linear_schedule(1000), {})
    with pytest.raises(ValueError, match="trained on the noise of"):
        classifier_guided_denoiser(mnist, other, y, guidance_scale=1.0)
    with pytest.raises(ValueError, match="class label -1"):
        check_class_labels(torch.tensor([-1, 2]), 10)


def test_generate_images_uses_the_denoiser_builder_with_each_batch_s_labels():
    loaded = _conditional()
    seen = []

    def builder(y):
        seen.append(y.clone())
        return classifier_free_denoiser(loaded, y, guidance_scale=1.0)

    labels = torch.tensor([0, 1, 2, 3, 4])
    a = generate_images(loaded, 5, "ddim", 3, seed=4, batch_size=2, labels=labels, denoiser_for=builder)
    b = generate_images(loaded, 5, "ddim", 3, seed=4, batch_size=2, labels=labels)  # g = 1 is the conditional model
    assert [s.tolist() for s in seen] == [[0, 1], [2, 3], [4]]
    assert torch.equal(a, b)


# --- init_from ----------------------------------------------------------------------------------------------

def test_init_from_starts_the_conditional_model_at_the_unconditional_one():
    config = PRESETS["mnist-cpu-cfg"]
    assert config.init_from == "mnist" and config.label_dropout > 0 and config.target == load_model("mnist").target
    model = UNet(config.model).eval()
    _init_from(model, config)
    ref = load_model("mnist").model
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([1, 400, 1000])
    with torch.no_grad():
        expected = ref(x, t)
        for label in (0, 7, 10):  # every class and the "no label" class
            assert torch.equal(model(x, t, torch.full((3,), label)), expected)
    wrong = replace(config, model=replace(config.model, channels=(16, 32, 32)))
    with pytest.raises(ValueError, match=r"channels: \[16, 32, 64\] vs \[16, 32, 32\]"):
        _init_from(UNet(wrong.model), wrong)
    with pytest.raises(ValueError, match="target"):
        _init_from(UNet(config.model), replace(config, target="eps"))
    padded = replace(config, model=replace(config.model, pad_to=config.model.pad_to + 4))
    with pytest.raises(ValueError, match="pad_to"):
        _init_from(UNet(padded.model), padded)
    with pytest.raises(ValueError, match="schedule"):
        _init_from(UNet(config.model), replace(config, schedule=linear_schedule(1000)))
    with pytest.raises(ValueError, match="'classifier' checkpoint"):
        _init_from(UNet(config.model), replace(config, init_from="mnist-classifier"))
    # the dropout rate holds no weights and may differ
    _init_from(UNet(replace(config.model, dropout=0.2)), replace(config, model=replace(config.model, dropout=0.2)))


# --- the noise-conditional classifier -----------------------------------------------------------------------

def test_noisy_classifier_training_resumes_to_the_same_weights(tmp_path):
    images = torch.randint(0, 256, (24, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    labels = torch.arange(24) % 10
    config = NoisyClassifierTrainConfig(model=NoisyClassifierConfig(channels=(8, 8), emb_dim=8, groups=4), epochs=2, batch_size=8)
    schedule = linear_schedule(50)
    whole = train_noisy_classifier(config, schedule, tmp_path / "whole.safetensors", "cpu", images, labels, progress=False)
    half = train_noisy_classifier(replace(config, epochs=1), schedule, tmp_path / "half.safetensors", "cpu", images, labels,
                                  progress=False)
    # the one-epoch run's file, resumed by the two-epoch configuration, must refuse (other settings) ...
    with pytest.raises(ValueError, match="holds another run"):
        train_noisy_classifier(config, schedule, half, "cpu", images, labels, progress=False)
    # ... so interrupt a two-epoch run after its first epoch instead: the file is what a kill after epoch 1 leaves
    import ddpm_lib.training.noisy_classifier as nc
    calls = {"n": 0}
    real_save = nc.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt

    nc.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train_noisy_classifier(config, schedule, tmp_path / "resumed.safetensors", "cpu", images, labels, progress=False)
    finally:
        nc.save_checkpoint = real_save
    assert read_checkpoint(tmp_path / "resumed.safetensors").meta["epoch"] == 1
    train_noisy_classifier(config, schedule, tmp_path / "resumed.safetensors", "cpu", images, labels, progress=False)
    a, b = read_checkpoint(whole), read_checkpoint(tmp_path / "resumed.safetensors")
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    with pytest.raises(ValueError, match="holds another run"):
        train_noisy_classifier(config, cosine_schedule(50), whole, "cpu", images, labels, progress=False)
    loaded = load_noisy_classifier(whole)
    assert loaded.schedule.T == 50 and isinstance(loaded.model, NoisyClassifier)
    with pytest.raises(ValueError, match="not a noise-conditional classifier"):
        load_noisy_classifier("mnist-classifier")


# --- the command line -----------------------------------------------------------------------------------------

def test_the_diversity_counts_only_images_read_as_asked():
    from ddpm_lib.evaluation.guidance_tradeoff import _diversity

    # two digits; digit 1's third image is misread: it must not widen digit 1's spread
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 2.0], [100.0, 100.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    read = torch.tensor([True, True, True, True, False])
    assert _diversity(features, labels, read, None, num_classes=2) == pytest.approx((5.0 + 1.0) / 2)
    # a replicate with one distinct image of digit 0 has no within-class pair: nan, not an error
    assert math.isnan(_diversity(features, labels, read, torch.tensor([0, 0, 2, 3, 4]), num_classes=2))


def test_sample_a_conditional_model_with_classifier_free_guidance(tmp_path, capsys):
    out = tmp_path / "c.npz"
    assert main(["sample", "--checkpoint", "mnist-cfg", "--n", "2", "--steps", "2", "--class-labels", "0-9",
                 "--guidance-scale", "3", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["labels"].tolist() == [0, 1]
    capsys.readouterr()
    for extra, message in ((["--guidance-scale", "2"], "give them with --class-labels"),
                           ([], "is a conditional model: give --class-labels"),
                           (["--class-labels", "1", "--classifier", "mnist-noisy-classifier"], "is conditional: drop --classifier"),
                           (["--class-labels", "1", "--guidance-scale", "nan"], "finite number >= 0")):
        assert main(["sample", "--checkpoint", "mnist-cfg", "--n", "1", "--steps", "1", "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err, extra


def test_class_labels_parse_as_lists_and_cycled_ranges():
    assert _parse_class_labels("3,3,7", 7).tolist() == [3, 3, 7, 3, 3, 7, 3]
    assert _parse_class_labels("0-9", 12).tolist() == list(range(10)) + [0, 1]
    for bad, message in (("3,x", "comma-separated list"), ("9-0", "comma-separated list"), ("0-10", "digits 0-9"),
                         ("-3", "comma-separated list")):
        with pytest.raises(ValueError, match=message):
            _parse_class_labels(bad, 3)


def test_sample_with_labels_writes_them_and_refuses_bad_combinations(tmp_path, monkeypatch, capsys):
    import ddpm_lib.checkpoint as ckpt

    path = tmp_path / "noisy.safetensors"
    from ddpm_lib.checkpoint import save_checkpoint
    model = NoisyClassifier()
    save_checkpoint(path, {**{f"model.{k}": v for k, v in model.state_dict().items()}, "schedule.beta": load_model("mnist").schedule.beta},
                    {"kind": "noisy-classifier", "classifier": model.config.to_dict(), "schedule": {"name": "cosine", "T": 1000}})
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", "mnist", "--n", "3", "--steps", "2", "--class-labels", "3,7",
                 "--classifier", str(path), "--guidance-scale", "2", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["labels"].tolist() == [3, 7, 3] and f["images"].shape == (3, 28, 28)
    capsys.readouterr()
    cases = [
        (["--class-labels", "3"], "unconditional model, so --class-labels needs a noise-conditional classifier"),
        (["--guidance-scale", "2"], "give them with --class-labels"),
        (["--class-labels", "3", "--classifier", "mnist-classifier"], "not a noise-conditional classifier"),
        (["--class-labels", "3", "--classifier", str(path), "--guidance-scale", "-1"], "finite number >= 0"),
        (["--class-labels", "11", "--classifier", str(path)], "digits 0-9"),
    ]
    for extra, message in cases:
        assert main(["sample", "--checkpoint", "mnist", "--n", "1", "--steps", "1", "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err


def test_guidance_sweep_runs_and_resumes_from_its_cache(tmp_path, monkeypatch):
    from ddpm_lib.checkpoint import load_classifier
    from ddpm_lib.evaluation import guidance_sweep, within_class_distance
    import ddpm_lib.evaluation.guidance_tradeoff as sweep_module

    from ddpm_lib.data import load_mnist

    # a tenth of each split keeps the test quick: 1,000 test digits (100 of each class, about) and 6,000 training ones
    small = {split: tuple(a[::10] for a in load_mnist(split)) for split in ("train", "test")}
    monkeypatch.setattr(sweep_module, "load_mnist", lambda split: small[split])
    loaded = _conditional()
    guide = lambda g: partial(classifier_free_denoiser, loaded, guidance_scale=g)
    evaluator = load_classifier("mnist-classifier")
    kwargs = dict(n=100, steps=2, n_bootstrap=5, floor_sets=2, cache=tmp_path / "cache")
    first = guidance_sweep(loaded, evaluator, guide, [1.0, 3.0], **kwargs)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["scale_1.npz", "scale_3.npz"]
    monkeypatch.setattr(sweep_module, "generate_images", lambda *a, **k: pytest.fail("the cache was not used"))
    again = guidance_sweep(loaded, evaluator, guide, [1.0, 3.0], **kwargs)
    for r, s in zip(first["rows"], again["rows"]):
        assert r["fd"] == s["fd"] and r["accuracy"] == s["accuracy"]
        assert r["diversity"] == s["diversity"] or math.isnan(r["diversity"]) and math.isnan(s["diversity"])
    row = first["rows"][1]
    assert row["guidance_scale"] == 3.0 and row["w"] == 2.0
    k = round(row["accuracy"] * 100)  # Agresti-Coull: sqrt(p~ (1 - p~) / (n + 4)), p~ = (k + 2) / (n + 4)
    assert row["accuracy_se"] == pytest.approx(math.sqrt((k + 2) / 104 * (1 - (k + 2) / 104) / 104), rel=1e-12)
    with pytest.raises(ValueError, match="holds images drawn with"):
        guidance_sweep(loaded, evaluator, guide, [1.0], **kwargs, guide_name="another model")
    with pytest.raises(ValueError, match="holds images drawn with"):
        guidance_sweep(loaded, evaluator, guide, [1.0], **{**kwargs, "steps": 3})
    with pytest.raises(ValueError, match="n >= 100"):
        guidance_sweep(loaded, evaluator, guide, [1.0], n=50)
    # the diversity measure: identical images in a class have distance 0; duplicates of one original are left out
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert within_class_distance(f, y, num_classes=2) == pytest.approx((5.0 + 10.0) / 2)
    assert within_class_distance(f[[0, 0, 1, 2, 3]], torch.tensor([0, 0, 0, 1, 1]), num_classes=2,
                                 index=torch.tensor([0, 0, 1, 2, 3])) == pytest.approx((5.0 + 10.0) / 2)
