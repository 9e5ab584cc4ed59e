"""Profiles load, overrides convert types, and bad settings are refused before anything heavy loads."""
from pathlib import Path

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


BAD_SETTINGS = [  # (override, words its message must hold): by the loader and by `medcore train`
    ("quant.precision=int3", ["quant.precision='int3'", "bf16, int8, nf4, fp4"]),
    ("lora.method=prefix", ["lora.method='prefix'", "lora, dora, rslora, none"]),
    ("lora.r=0", ["lora.r=0", "[1, 1024]"]),
    ("lora.r=4.5", ["lora.r='4.5'", "int"]),
    ("lora.r=abc", ["lora.r", "int"]),
    ("lora.rank=4", ["lora.rank", "allowed"]),
    ("train.learning_rate=5", ["train.learning_rate", "range"]),
    ("train.learning_rate=3", ["train.learning_rate=3.0", "[1e-07, 0.1]"]),
    ("train.learning_rate=0", ["train.learning_rate=0.0", "out of range"]),
    ("train.token_budget=100", ["token_budget", "max_length"]),
    ("train.token_budget=256", ["train.token_budget=256", "data.max_length="]),
    ("train.save_steps=0", ["train.save_steps=0", "out of range"]),
    ("data.on_invalid=ignore", ["data.on_invalid='ignore'", "raise, skip"]),
    ("model.source=local:/no/such/folder", ["model.source='local:/no/such/folder'", "does not exist"]),
    ("model.source=weird", ["model.source='weird'", "hub:<repo_id>, local:<path>"]),
]


@pytest.mark.parametrize("override, words", BAD_SETTINGS)
def test_bad_settings_refused_with_field_named(override, words):
    with pytest.raises((ConfigError, ValueError, FileNotFoundError)) as err:
        load_profile("ci", [override])
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("override, words", BAD_SETTINGS)
def test_bad_settings_on_the_command_line_are_one_line_before_anything_loads(no_loading, tmp_path, capsys,
                                                                           override, words):
    from medcore.__main__ import main as cli

    rc = cli(["train", "--profile", "ci", "--set", override, "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("medcore train: error:")
    for word in words:
        assert word in err
    assert not any(tmp_path.iterdir())


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_profile("nonexistent")


def test_set_field_rejects_section_name():
    with pytest.raises(ConfigError):
        set_field(RunConfig(), "lora", 3)


# ---- profiles as users write them ---------------------------------------------------------------------------------

def test_bad_yaml_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nlora:\n  r: 4\n   alpha: 8\n")  # one space too many
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(err.value).startswith(f"profile {path} is not valid YAML at line 4, column 9")
    path.write_text("- a list\n- not settings\n")
    with pytest.raises(ConfigError, match="must be a mapping of settings"):
        load_profile(path)


def test_misspelt_section_lists_the_sections_too(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nlroa:\n  r: 4\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    message = str(err.value)
    assert f"profile {path}: unknown setting 'lroa' (did you mean 'lora'?)" in message
    assert "allowed here: name, results_dir; sections: data, model, quant, lora, train, eval" in message
    with pytest.raises(ConfigError, match=r"'lora.rank'.*allowed here: method, r, alpha, dropout, targets$"):
        load_profile("ci", ["lora.rank=4"])


@pytest.mark.parametrize("text, words", [("lora:\n  r: [4]\n", "lora.r=[4] is not a valid int"),
                                         ("train:\n  learning_rate: {a: 1}\n", "train.learning_rate={'a': 1}"),
                                         ("quant:\n  double_quant: 1\n", "quant.double_quant=1 is not a valid bool"),
                                         ("lora: 4\n", "section 'lora' must be a mapping of its settings (method")])
def test_yaml_value_of_the_wrong_type_is_named(tmp_path, text, words):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert words in str(err.value)


def test_profile_paths_are_relative_to_the_profile_not_the_working_directory(tmp_path, monkeypatch, medmcqa_dir):
    monkeypatch.chdir(tmp_path)  # outside the repository
    cfg = load_profile("ci")
    assert cfg.data.source.startswith("local:")
    assert Path(cfg.data.source.removeprefix("local:")).samefile(medmcqa_dir / "dev.json")
    study = load_profile("study")
    assert Path(study.data.train_source.removeprefix("local:")).samefile(medmcqa_dir / "train_sample.jsonl")
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "mine.yaml").write_text("data:\n  source: local:data/dev.json\nmodel:\n  source: random:tiny-gemma\n")
    assert load_profile(folder / "mine.yaml").data.source == f"local:{folder / 'data' / 'dev.json'}"
    given = load_profile(folder / "mine.yaml", ["data.source=local:elsewhere.json"])  # --set: as typed
    assert given.data.source == "local:elsewhere.json"


# ---- the one way a command takes its configuration --------------------------------------------------------------

def test_with_overrides_returns_a_validated_copy_and_leaves_the_config_alone():
    cfg = load_profile("ci")
    out = cfg.with_overrides({"train.seed": 3}, name="other")
    assert (out.train.seed, out.name) == (3, "other") and (cfg.train.seed, cfg.name) == (0, "ci")
    assert cfg.with_overrides(["lora.r=6"]).lora.r == 6 and cfg.lora.r != 6
    with pytest.raises(ConfigError, match="lora.r"):
        cfg.with_overrides({"lora.r": 0})


def test_config_arguments_read_back_in_order_with_a_prefix():
    import argparse

    from medcore.config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p, profile="ci")
    add_config_arguments(p, profile="demo", prefix="accuracy-")
    a = p.parse_args(["--set", "lora.r=6", "--accuracy-set", "lora.r=2", "--accuracy-profile", "ci"])
    assert config_from_args(a, "lora.r=8").lora.r == 6  # a command's own settings first, then --set
    assert config_from_args(a, "lora.r=8", prefix="accuracy-").lora.r == 2
    assert config_from_args(p.parse_args([]), "lora.r=8").lora.r == 8


@pytest.mark.parametrize("module, argv", [
    ("medcore.flows.cli", ["train", "--help"]), ("medcore.flows.cli", ["run", "--help"]),
    ("medcore.flows.cli", ["evaluate", "--help"]), ("medcore.bench.command", ["--help"]),
    ("medcore.flows.study", ["--help"]), ("medcore.scale.scaleout", ["--help"]), ("medcore.bench.gpucheck", ["--help"]),
    ("medcore.scale.distributed", ["train", "--help"]), ("medcore.scale.distributed", ["evaluate", "--help"]),
    ("medcore.distributed", ["train", "--help"])])  # the old name, kept for one release
def test_every_entry_point_takes_profile_and_set_through_the_one_helper(module, argv, capsys):
    import importlib

    main = importlib.import_module(module)
    with pytest.raises(SystemExit):
        (main._run if module == "medcore.flows.cli" else main.main)(argv)
    out = " ".join(capsys.readouterr().out.split())
    assert "--profile PROFILE" in out and "override one setting, e.g. train.seed=1; repeatable" in out  # the helper's
