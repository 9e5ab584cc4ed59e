"""The benchmark's command line (medcore.bench.options): the RunConfig from --profile/--set, the bench-only options,
the levers as RunConfig overrides, bad values refused naming the flag, the old lever names kept for one release."""
import pytest

from medcore.bench import options
from medcore.config import ConfigError


def test_arguments():
    cfg, opts = options.parse_args(["--", "--levers", "repeat,budget", "--set", "train.compile=true"])
    assert cfg.model.source == "random:gemma-2b" and cfg.name == "paper" and cfg.train.compile
    assert opts.levers == ["repeat", "budget"] and opts.out == "results/bench-product"
    variants = options.lever_variants(["budget", "compile", "repeat"], cfg, opts)
    assert [v[1] for v in variants] == ["token budget 4096", "token budget 16384", "compile toggled", "repeat"]
    assert variants[1][2] == {"train.token_budget": 16384, "train.max_batch_size": 256}
    assert variants[2][2] == {"train.compile": False} and variants[3][2] == {}
    for bad in (["--levers", "warp-drive"], ["--budgets", "8k"], ["--score-batch-sizes", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            options.parse_args(bad)
    with pytest.raises(ConfigError, match="lora.r"):
        options.parse_args(["--set", "lora.r=0"])


def test_the_old_lever_names_still_work_with_a_deprecation_message(capsys):
    from medcore.bench.options import parse_args

    _, opts = parse_args(["--model", "random:tiny-gemma", "--levers", "peft_cast,repeat,lora_cast"])
    assert opts.levers == ["lora_input_float32", "repeat", "lora_input_float32"]
    err = capsys.readouterr().err
    assert "'peft_cast' is now 'lora_input_float32'" in err and "'lora_cast' is now" in err
