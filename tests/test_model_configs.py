"""The networks' configs (ddpm_lib.models.config.DictConfig): one JSON form, one strict from_dict, the shipped files."""

import dataclasses
import json

import pytest

from ddpm_lib.checkpoint import load_classifier, load_model, load_noisy_classifier, load_vae, read_checkpoint, resolve_checkpoint
from ddpm_lib.models.classifier import ClassifierConfig
from ddpm_lib.models.noisy_classifier import NoisyClassifierConfig
from ddpm_lib.models.config import DictConfig
from ddpm_lib.models.unet import UNetConfig
from ddpm_lib.models.vae import VAEConfig

NON_DEFAULT = [
    UNetConfig(channels=(16, 32, 64), num_res_blocks=1, num_classes=10, dropout=0.1),
    ClassifierConfig(channels=(8, 16), features=64),
    VAEConfig(latent_dim=8, hidden=(64, 32, 16), min_log_scale=-5.0),
]
IDS = [type(c).__name__ for c in NON_DEFAULT]
TUPLE_FIELD = {UNetConfig: "channels", ClassifierConfig: "channels", VAEConfig: "hidden"}

# the shipped files and the meta key that holds each one's network config
SHIPPED = [
    ("mnist", "model", UNetConfig),
    ("mnist-cpu", "model", UNetConfig),
    ("mnist-cpu-short-eps", "model", UNetConfig),
    ("mnist-classifier", "classifier", ClassifierConfig),
    ("vae-mnist", "model", VAEConfig),
    ("mnist-cfg", "model", UNetConfig),
    ("mnist-noisy-classifier", "classifier", NoisyClassifierConfig),
]


@pytest.mark.parametrize("cfg", NON_DEFAULT, ids=IDS)
def test_to_dict_is_json_and_round_trips(cfg):
    d = cfg.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(cfg)]
    field = TUPLE_FIELD[type(cfg)]
    assert d[field] == list(getattr(cfg, field))  # tuples are written as lists
    back = type(cfg).from_dict(json.loads(json.dumps(d)))
    assert back == cfg and isinstance(getattr(back, field), tuple)
    hash(back)  # frozen and made of tuples, so usable as a key
    d[field].append(1)
    assert d[field] != list(getattr(cfg, field))  # to_dict hands out a copy, never the config's own values


@pytest.mark.parametrize("cfg", NON_DEFAULT, ids=IDS)
def test_from_dict_refuses_unknown_and_missing_keys_naming_the_class_and_allowed_keys(cfg):
    cls = type(cfg)
    allowed = [f.name for f in dataclasses.fields(cls)]
    d = {**cfg.to_dict(), "colour": 3}
    with pytest.raises(ValueError, match=rf"{cls.__name__} mismatch: unknown keys \['colour'\], missing keys \[\]") as err:
        cls.from_dict(d)
    assert str(allowed) in str(err.value)
    # a field that every checkpoint must hold (one of FIELDS_ADDED_LATER may be absent: it reads as its old value)
    required = [k for k in allowed if k not in cls.FIELDS_ADDED_LATER][-1]
    d = cfg.to_dict()
    del d[required]
    with pytest.raises(ValueError, match=rf"unknown keys \[\], missing keys \['{required}'\]"):
        cls.from_dict(d)
    with pytest.raises(TypeError, match=f"{cls.__name__}.from_dict expects a dict"):
        cls.from_dict(list(cfg.to_dict().items()))


def test_a_unet_config_without_learn_variance_reads_as_fixed_variances_but_other_fields_stay_required():
    # learn_variance came after the shipped checkpoints (UNetConfig.FIELDS_ADDED_LATER); they read as False
    assert UNetConfig.FIELDS_ADDED_LATER == {"learn_variance": False}
    learned = UNetConfig(channels=(16, 32), learn_variance=True).to_dict()
    assert UNetConfig.from_dict(learned).learn_variance is True  # a stored True is kept, not replaced by the default
    old = {k: v for k, v in learned.items() if k != "learn_variance"}
    assert UNetConfig.from_dict(old) == UNetConfig(channels=(16, 32), learn_variance=False)
    without_groups = {k: v for k, v in learned.items() if k != "groups"}
    with pytest.raises(ValueError, match=r"UNetConfig mismatch: unknown keys \[\], missing keys \['groups'\]"):
        UNetConfig.from_dict(without_groups)
    # a config class without later fields still requires every one
    assert ClassifierConfig.FIELDS_ADDED_LATER == {} and VAEConfig.FIELDS_ADDED_LATER == {}


def test_from_dict_still_runs_each_configs_own_validation():
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig.from_dict({**UNetConfig().to_dict(), "channels": [12, 24]})
    with pytest.raises(ValueError, match="positive hidden widths"):
        VAEConfig.from_dict({**VAEConfig().to_dict(), "hidden": []})


def test_tuple_fields_are_found_through_optional_annotations():
    @dataclasses.dataclass(frozen=True)
    class Demo(DictConfig):
        sizes: tuple[int, ...] | None = None
        names: list[str] = dataclasses.field(default_factory=list)
        width: int = 1

    got = Demo.from_dict({"sizes": [1, 2], "names": ["a"], "width": 3})
    assert got.sizes == (1, 2) and isinstance(got.sizes, tuple)
    assert got.names == ["a"] and isinstance(got.names, list)  # a list field stays a list
    assert Demo.from_dict({"sizes": None, "names": [], "width": 1}).sizes is None
    assert Demo(sizes=(4,)).to_dict() == {"sizes": [4], "names": [], "width": 1}


@pytest.mark.parametrize("name, key, cls", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_configs_read_back_to_the_same_json(name, key, cls):
    # what the checkpoints hold is what to_dict writes: reading and writing again changes nothing
    # (plus the fields added after the file was written, with the value every such file implicitly has)
    stored = read_checkpoint(resolve_checkpoint(name)).meta[key]
    added = {k: v for k, v in cls.FIELDS_ADDED_LATER.items() if k not in stored}
    assert cls.from_dict(stored).to_dict() == {**stored, **added}


def test_shipped_weights_still_load():
    for name in ["mnist", "mnist-cpu", "mnist-cpu-short-eps"]:
        assert isinstance(load_model(name).model.config, UNetConfig)
    assert load_classifier("mnist-classifier").config == ClassifierConfig()
    vae, _ = load_vae("vae-mnist")
    assert vae.config == VAEConfig(latent_dim=32, hidden=(256, 256))
    cfg = load_model("mnist-cfg")
    assert cfg.model.config.num_classes == 10 and cfg.meta["train"]["init_from"] == "mnist"
    noisy = load_noisy_classifier("mnist-noisy-classifier")
    assert noisy.model.config == NoisyClassifierConfig() and noisy.schedule.T == 1000
    accuracy = {int(t): a for t, a in noisy.meta["test"]["accuracy_at_t"].items()}
    assert accuracy[1] > 0.98 and accuracy[1000] < 0.2  # a classifier of clean digits at t = 1, chance at t = T
