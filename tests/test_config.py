"""Profiles load, overrides convert types, and bad settings are refused before anything heavy loads."""
import pytest

from medcore.config import ConfigError, RunConfig, load_profile, set_field


@pytest.mark.parametrize("name", ["demo", "ci", "paper"])
def test_shipped_profiles_load_and_validate(name):
    cfg = load_profile(name)
    assert cfg.name == name
    assert cfg.quant.precision == "nf4" and cfg.quant.double_quant


def test_overrides_are_typed():
    cfg = load_profile("ci", ["lora.r=8", "quant.double_quant=false", "train.learning_rate=1e-3", "data.eval_limit=none"])
    assert cfg.lora.r == 8 and cfg.quant.double_quant is False
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.data.eval_limit is None


def test_round_trip_through_dict():
    cfg = load_profile("demo", ["lora.targets=attention"])
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("override, words", [
    ("quant.precision=int3", ["quant.precision", "nf4", "int8"]),
    ("lora.method=prefix", ["lora.method", "dora"]),
    ("lora.r=0", ["lora.r", "range"]),
    ("train.learning_rate=5", ["train.learning_rate", "range"]),
    ("train.token_budget=100", ["token_budget", "max_length"]),
    ("lora.r=abc", ["lora.r", "int"]),
    ("lora.rank=4", ["lora.rank", "allowed"]),
    ("model.source=local:/no/such/folder", ["/no/such/folder"]),
    ("model.source=weird", ["weird"]),
])
def test_bad_settings_refused_with_field_named(override, words):
    with pytest.raises((ConfigError, ValueError, FileNotFoundError)) as err:
        load_profile("ci", [override])
    for word in words:
        assert word in str(err.value)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_profile("nonexistent")


def test_set_field_rejects_section_name():
    with pytest.raises(ConfigError):
        set_field(RunConfig(), "lora", 3)
