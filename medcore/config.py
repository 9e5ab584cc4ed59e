"""One typed run configuration that travels through data, model, training and evaluation.

A profile is a YAML file of `RunConfig` values (``medcore/profiles/<name>.yaml`` or any path);
``--set section.field=value`` and papermill parameters override single fields. Everything is
validated here, before any model or data set is loaded, so a typo costs seconds, not a download.

A relative ``local:`` path in a profile (``data.source``, ``data.train_source``, ``model.source``) names a file
next to the profile, so a profile works from any directory; the shipped profiles' paths are relative to the
project root (the folder holding ``medcore/``). Paths given with ``--set`` stay relative to the working directory.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PROFILE_DIR = Path(__file__).parent / "profiles"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")  # a run name or run id: it names a folder

PRECISIONS = ("bf16", "int8", "nf4", "fp4", "fp32")  # fp32: unquantized float32, as the harness scores
PEFT_METHODS = ("lora", "dora", "rslora", "none")
LORA_TARGETS = ("attention", "mlp", "all-linear")
OPTIMIZERS = ("auto", "adamw_torch", "paged_adamw_8bit", "adamw_8bit", "paged_adamw_32bit")
SCHEDULERS = ("cosine", "linear", "constant_with_warmup")
REPORT_TO = ("auto", "tensorboard", "none")  # auto: TensorBoard events where tensorboard is installed
ON_INVALID = ("raise", "skip")
AUTOCAST = ("auto", "bf16", "off")


class ConfigError(ValueError):
    """A setting is wrong; the message names the field, the value and what is allowed."""


@dataclass
class DataConfig:
    source: str = "mirror"  # hub | hub:<repo> | local:<path> | mirror
    train_source: str | None = None  # None: split `source` by subject (train_size questions)
    train_split: str = "train"
    eval_split: str = "validation"
    train_size: int | None = 400  # questions used for training when training on a split of eval data
    eval_limit: int | None = None  # None: every remaining question
    max_length: int = 512
    on_invalid: str = "raise"
    train_on_explanation: bool = False
    shuffle_options: bool = True  # each epoch a fresh option order, every letter the answer equally often
    seed: int = 0


@dataclass
class ModelConfig:
    source: str = "embedded:gemma-3-270m"  # hub:<id> | local:<path> | embedded:<name> | random:<shape>


@dataclass
class QuantConfig:
    precision: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"

    @property
    def label(self) -> str:
        """How records and pages name the base precision: nf4+dq, fp4, int8, bf16..."""
        return self.precision + ("+dq" if self.double_quant and self.precision in ("nf4", "fp4") else "")


@dataclass
class LoraConfig:
    method: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: str = "all-linear"


@dataclass
class TrainConfig:
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    token_budget: int = 4096  # tokens per batch, padding included ("dynamic batch sizing")
    max_batch_size: int = 64
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    gradient_checkpointing: bool = True
    compile: bool = False  # torch.compile each decoder layer (regional); pays back only on long runs
    autocast: str = "auto"  # bf16 autocast around each training step: auto (CUDA only) | bf16 | off
    optimizer: str = "auto"  # auto: paged 8-bit AdamW on GPU, AdamW on CPU
    # peft's float32 copy of each LoRA input under bf16 autocast: autocast casts it back to bf16 for the matmul,
    # so by default (lora/rslora) it is skipped, which saves its time and memory
    lora_input_float32: bool = False
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 5
    report_to: str = "auto"  # where the Trainer's logs go besides the run record: auto | tensorboard | none
    seed: int = 0


@dataclass
class EvalConfig:
    batch_size: int | None = None  # None: 256 on CUDA, 16 on CPU
    autocast: str = "auto"  # bf16 autocast around scoring: auto (CUDA only) | bf16 | off
    latency_batches: int = 20  # batch-1 timings taken for the latency figure
    rotations: bool | None = None  # also score the options in their 4 cyclic orders; None: on CUDA only
    generation: bool = False


@dataclass
class RunConfig:
    name: str = "run"
    results_dir: str = "results"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        for key, value in (values or {}).items():
            _assign(cfg, key, value)
        return cfg

    def validate(self) -> "RunConfig":
        validate(self)
        return self

    def with_overrides(self, overrides: dict[str, Any] | list[str] | None = None, **fields_: Any) -> "RunConfig":
        """A validated copy with dotted overrides (``{"train.seed": 1}`` or ``["train.seed=1"]``) and top-level
        fields (``name=...``) applied; this config is left as it is."""
        out = copy.deepcopy(self)
        items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
        for key, value in [*fields_.items(), *items]:
            set_field(out, key, value)
        return out.validate()


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(RunConfig) if f.default_factory is not dataclasses.MISSING}


def _assign(cfg: RunConfig, key: str, value: Any) -> None:
    """Set `key` (a top-level field or a whole section) from plain YAML values."""
    sections = _section_types()
    if key in sections:
        if not isinstance(value, dict):
            allowed = ", ".join(f.name for f in fields(sections[key]))
            raise ConfigError(f"section {key!r} must be a mapping of its settings ({allowed}), got {value!r}")
        for sub, subvalue in value.items():
            set_field(cfg, f"{key}.{sub}", subvalue)
    else:
        set_field(cfg, key, value)


def set_field(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set one field by its dotted name, converting strings (from --set) to the field's type."""
    parts = dotted.split(".")
    target: Any = cfg
    sections = list(_section_types())
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in fields(target)}:
            raise ConfigError(f"unknown setting {dotted!r}{_did_you_mean(part, sections)}; "
                              f"sections: {', '.join(sections)}")
        target = getattr(target, part)
    names = {f.name: f for f in fields(target)} if dataclasses.is_dataclass(target) else {}
    if parts[-1] not in names or dataclasses.is_dataclass(getattr(target, parts[-1])):
        leaves = [n for n in names if not dataclasses.is_dataclass(getattr(target, n))]
        here = f"allowed here: {', '.join(leaves)}" + (f"; sections: {', '.join(sections)}" if target is cfg else "")
        hint = _did_you_mean(parts[-1], leaves + (sections if target is cfg else []))
        raise ConfigError(f"unknown setting {dotted!r}{hint}; {here}")
    setattr(target, parts[-1], _coerce(dotted, value, getattr(target, parts[-1]), names[parts[-1]].type))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_YAML_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _coerce(name: str, value: Any, current: Any, annotation: Any) -> Any:
    text = str(annotation)
    kind = text.split(" ")[0]
    if value is not None and not isinstance(value, str) and kind in _YAML_TYPES and (
            not isinstance(value, _YAML_TYPES[kind]) or (kind != "bool" and isinstance(value, bool))):
        raise ConfigError(f"{name}={value!r} is not a valid {text}")  # a YAML list or mapping, or true for a number
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("none", "null", "~") and "None" in text:
            return None
        try:
            if text.startswith("bool"):
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if text.startswith("int"):
                return int(value)
            if text.startswith("float"):
                return float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a valid {text}") from None
        return value
    if value is None and "None" not in text:
        raise ConfigError(f"{name} may not be empty (type {text})")
    if text.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def load_profile(profile: str | Path = "demo", overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Read a profile by name (from medcore/profiles) or path, apply overrides, validate."""
    path = Path(profile)
    if not path.suffix:
        path = PROFILE_DIR / f"{profile}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {str(profile)!r} not found; known profiles: {', '.join(names)}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) or err
        raise ConfigError(f"profile {path} is not valid YAML{where}: {what}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"profile {path} must be a mapping of settings (name, data:, lora:, ...), "
                          f"not a {type(values).__name__}")
    shipped = path.resolve().parent == PROFILE_DIR.resolve()
    _resolve_local_paths(values, PROFILE_DIR.parent.parent if shipped else path.resolve().parent)
    try:
        cfg = RunConfig.from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"profile {path}: {err}") from None
    if cfg.name == "run":
        cfg.name = path.stem
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_field(cfg, key, value)
    return cfg.validate()


def add_config_arguments(parser: argparse.ArgumentParser, profile: str | None = "demo", prefix: str = "",
                         what: str = "") -> None:
    """``--profile`` and ``--set`` (``--<prefix>profile``, ``--<prefix>set``): the one way a command takes its run
    configuration; :func:`config_from_args` reads them back."""
    scope = f" ({what})" if what else ""
    parser.add_argument(f"--{prefix}profile", default=profile,
                        help=f"a profile name (medcore/profiles) or a YAML path{scope}; default {profile}")
    parser.add_argument(f"--{prefix}set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one setting, e.g. train.seed=1; repeatable{scope}")


def config_from_args(args: argparse.Namespace, *first: str, prefix: str = "") -> RunConfig:
    """The validated RunConfig of :func:`add_config_arguments`' flags: the profile, then `first` (a command's own
    settings, e.g. ``model.source=...`` from ``--model``), then each ``--set`` in order."""
    dest = prefix.replace("-", "_")
    return load_profile(getattr(args, f"{dest}profile"), [*first, *getattr(args, f"{dest}set")])


def _resolve_local_paths(values: dict[str, Any], base: Path) -> None:
    """A profile's relative ``local:`` paths (and a data source given as a bare path) against `base`."""
    for section, key in (("data", "source"), ("data", "train_source"), ("model", "source")):
        part = values.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if not isinstance(value, str):
            continue
        prefix, rest = ("local:", value[6:]) if value.startswith("local:") else ("", value)
        bare_path = section == "data" and not prefix and value not in ("hub", "mirror") and not value.startswith("hub:")
        if (prefix or bare_path) and rest and not Path(rest).expanduser().is_absolute() and not rest.startswith("~"):
            if prefix or (base / rest).exists():
                part[key] = prefix + os.path.normpath(base / rest)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ConfigError(f"{name}={value!r} is out of range [{low}, {high}]")


def validate(cfg: RunConfig) -> None:
    """Refuse bad settings before anything heavy happens. Raises ConfigError naming the field."""
    _choice("quant.precision", cfg.quant.precision, PRECISIONS)
    _choice("quant.compute_dtype", cfg.quant.compute_dtype, ("bfloat16", "float32"))
    _choice("lora.method", cfg.lora.method, PEFT_METHODS)
    _choice("lora.targets", cfg.lora.targets, LORA_TARGETS)
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _choice("train.scheduler", cfg.train.scheduler, SCHEDULERS)
    _choice("train.report_to", cfg.train.report_to, REPORT_TO)
    _choice("train.autocast", cfg.train.autocast, AUTOCAST)
    _choice("data.on_invalid", cfg.data.on_invalid, ON_INVALID)
    _range("lora.r", cfg.lora.r, 1, 1024)
    _range("lora.alpha", cfg.lora.alpha, 1, 4096)
    _range("lora.dropout", cfg.lora.dropout, 0.0, 0.9)
    _range("train.learning_rate", cfg.train.learning_rate, 1e-7, 1e-1)
    _range("train.warmup_ratio", cfg.train.warmup_ratio, 0.0, 0.5)
    _range("train.token_budget", cfg.train.token_budget, 16, 10_000_000)
    _range("train.max_batch_size", cfg.train.max_batch_size, 1, 100_000)
    _range("data.max_length", cfg.data.max_length, 16, 131_072)
    if cfg.eval.batch_size is not None:
        _range("eval.batch_size", cfg.eval.batch_size, 1, 100_000)
    _choice("eval.autocast", cfg.eval.autocast, AUTOCAST)
    _range("train.weight_decay", cfg.train.weight_decay, 0.0, 1.0)
    for name in ("eval_steps", "save_steps", "logging_steps"):  # 0 would fail deep inside the Trainer
        _range(f"train.{name}", getattr(cfg.train, name), 1, 2**31 - 1)
    _range("train.seed", cfg.train.seed, 0, 2**32 - 1)
    _range("data.seed", cfg.data.seed, 0, 2**32 - 1)
    if cfg.train.epochs <= 0 and cfg.train.max_steps <= 0:
        raise ConfigError("train.epochs or train.max_steps must be positive")
    if cfg.train.token_budget < cfg.data.max_length:
        raise ConfigError(
            f"train.token_budget={cfg.train.token_budget} is smaller than data.max_length={cfg.data.max_length}: "
            "the longest example would not fit in a batch"
        )
    for name in ("train_size", "eval_limit"):
        value = getattr(cfg.data, name)
        if value is not None and value < 1:
            raise ConfigError(f"data.{name}={value} must be at least 1 or None")
    if not NAME_PATTERN.fullmatch(cfg.name):
        raise ConfigError(f"name={cfg.name!r} may hold only letters, digits, '.', '_' and '-' (it names a folder)")
    from medcore.models import check_model_source

    try:
        check_model_source(cfg.model.source)
    except (ValueError, OSError) as err:  # a typo or a missing folder: say which setting, before any download
        raise ConfigError(f"model.source={cfg.model.source!r}: {err}") from None
