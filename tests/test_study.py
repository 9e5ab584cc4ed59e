"""The study driver: its ablations and seeds are valid runs, and a tiny CPU study records every metric (an
ablation goes through the same train_and_score as a seed run)."""
from pathlib import Path

import pytest

from medcore.config import ConfigError, load_profile
from medcore.flows import study
from medcore.report import position_metrics as pos
from medcore.report import tables as an
from medcore.records import load_predictions, load_run, load_runs


@pytest.fixture(scope="module")
def profile(medmcqa_dir):
    return load_profile("study", [f"data.source=local:{medmcqa_dir / 'dev.json'}",
                                  f"data.train_source=local:{medmcqa_dir / 'train_sample.jsonl'}"])


def test_ablations_change_one_thing_each(profile, medmcqa_dir):
    expected = {"abl-no-shuffle": ("data", "shuffle_options", False),
                "abl-explanation": ("data", "train_on_explanation", True),
                "abl-llm-keyed": ("data", "train_source", f"local:{medmcqa_dir / 'train_sample_llm_keyed.jsonl'}")}
    for name, (section, field, value) in expected.items():
        run = study._variant(profile, name, study.ABLATIONS[name])
        assert getattr(getattr(run, section), field) == value and run.name == name
        assert getattr(getattr(profile, section), field) != value  # the profile itself is left alone
    keyed = study._variant(profile, "abl-llm-keyed", study.ABLATIONS["abl-llm-keyed"])
    assert Path(keyed.data.train_source.removeprefix("local:")).is_file()
    no_file = load_profile("ci")
    with pytest.raises(ConfigError, match="data.train_source=None: the train_sample_llm_keyed.jsonl ablation"):
        study._variant(no_file, "abl-llm-keyed", study.ABLATIONS["abl-llm-keyed"])


def test_label_noise_ablation_trains_on_other_questions_and_scores_the_same(profile):
    train_ds, eval_ds = study.workflows.study_data(profile)
    keyed = study._variant(profile, "abl-llm-keyed", study.ABLATIONS["abl-llm-keyed"])
    own = study._train_set(keyed, profile, train_ds)
    assert len(own) == 2135 and len(train_ds) == 1619 and not set(own["id"]) & set(train_ds["id"])
    r4 = study._variant(profile, "abl-r4", study.ABLATIONS["abl-r4"])
    assert study._train_set(r4, profile, train_ds) is train_ds  # the evaluation set is the study's in both cases


def test_seed_runs_name_each_seed(profile):
    runs = study.seed_runs(profile, "0,1,2")
    assert [r.name for r in runs] == ["study", "study-seed1", "study-seed2"]
    assert [r.train.seed for r in runs] == [0, 1, 2] and runs[0] is profile
    assert [r.name for r in study.seed_runs(profile, None)] == ["study"]
    for bad in ("0,x", "1,1", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            study.seed_runs(profile, bad)


def test_tiny_study_records_every_metric_for_each_seed(tmp_path, medmcqa_dir):
    sets = [f"results_dir={tmp_path / 'results'}", f"data.source=local:{medmcqa_dir / 'dev.json'}",
            f"data.train_source=local:{medmcqa_dir / 'train_sample.jsonl'}", "data.train_size=16",
            "data.eval_limit=12", "train.max_steps=2", "train.save_steps=1000", "train.eval_steps=1000",
            "eval.rotations=true", "eval.latency_batches=1"]
    study.main(["--profile", "ci", "--parts", "zero-shot,main", "--seeds", "0,1",
                *[a for s in sets for a in ("--set", s)]])
    results = tmp_path / "results"
    scored = ["ci-nf4-dq-zero-shot", "ci-fine-tuned", "ci-seed1-fine-tuned"]
    for run in scored:
        m = load_run(results / run)["metrics"]
        assert m["rotations"] and m["n"] == 12 and m["ties"] == 0, run
        for key in ("accuracy", "circular_accuracy", "debiased_accuracy", "circular_ci_low", "debiased_ci_high",
                    "recall_A", "predicted_share_D", "predicted_share_all_orders_A"):
            assert 0 <= m[key] <= 1, (run, key)
        assert m["circular_accuracy"] <= m["accuracy"] + 1e-12
    assert load_run(results / "ci-seed1-fine-tuned")["config"]["train"]["seed"] == 1

    runs = load_runs(results)
    tests = pos.all_metric_tests(an.results_table(runs), results)
    pairs = tests.groupby("after_run")["metric"].apply(set)
    metrics = {"standard", "circular", "debiased", *(f"{k}_{c}" for k in ("recall", "predicted") for c in "ABCD")}
    assert set(pairs.index) == set(scored[1:]) and all(p == metrics for p in pairs)
    assert (tests["before_run"] == "ci-nf4-dq-zero-shot").all() and tests["pvalue"].between(0, 1).all()
    spread = pos.seed_spread(runs)
    assert set(spread["metric"]) == set(pos.SEED_METRICS) and set(spread["seeds"]) == {"0, 1"}
    assert set(spread["recipe"]) == {"ci-fine-tuned"}


def test_kfold_folds_run_separately_and_combine_once_all_are_recorded(tmp_path, medmcqa_dir):
    sets = [f"results_dir={tmp_path / 'results'}", f"data.source=local:{medmcqa_dir / 'dev.json'}",
            "data.eval_limit=10", "train.max_steps=1", "train.save_steps=1000", "train.eval_steps=1000",
            "eval.latency_batches=1"]
    args = ["--profile", "ci", "--parts", "kfold", "--k", "2", *[a for s in sets for a in ("--set", s)]]
    results = tmp_path / "results"
    study.main([*args, "--folds", "1"])
    assert (results / "ci-kfold2-fold1-fold" / "metrics.json").is_file()
    assert not (results / "ci-kfold2").exists()  # waits for fold 0
    study.main([*args, "--folds", "0"])
    combined = load_run(results / "ci-kfold2")
    preds = load_predictions(results / "ci-kfold2")
    assert sorted(preds["id"]) == sorted(preds["id"].unique()) and len(preds) == 10  # each question once
    assert set(preds["fold"]) == {0, 1} and combined["metrics"]["k"] == 2
    with pytest.raises(ConfigError, match="--folds '2'"):
        study.main([*args, "--folds", "2"])


def _refuse(*args, **kwargs):
    raise AssertionError("a recorded part was run again")


def test_a_part_whose_record_exists_is_skipped(tmp_path, medmcqa_dir, monkeypatch):
    from medcore.records import write_run_record

    results = tmp_path / "results"
    sets = [f"results_dir={results}", f"data.source=local:{medmcqa_dir / 'dev.json'}", "data.eval_limit=6"]
    cfg = load_profile("ci", sets)
    for run_id in ("ci-bf16-zero-shot", "ci-nf4-dq-zero-shot", "ci-fine-tuned"):
        write_run_record(results, run_id, cfg, {"accuracy": 0.5})
    monkeypatch.setattr(study.workflows, "load", _refuse)
    monkeypatch.setattr(study.workflows, "finetune", _refuse)
    study.main(["--profile", "ci", "--parts", "zero-shot,main", *[a for s in sets for a in ("--set", s)]])
    assert sorted(p.name for p in results.iterdir()) == ["ci-bf16-zero-shot", "ci-fine-tuned", "ci-nf4-dq-zero-shot"]


def test_no_part_starts_after_the_deadline(tmp_path, medmcqa_dir, monkeypatch, capsys):
    sets = [f"results_dir={tmp_path / 'results'}", f"data.source=local:{medmcqa_dir / 'dev.json'}", "data.eval_limit=6"]
    monkeypatch.setattr(study.workflows, "load", _refuse)
    monkeypatch.setattr(study.workflows, "finetune", _refuse)
    study.main(["--profile", "ci", "--parts", "zero-shot,main", "--deadline", "1e-9",
                *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr().out
    assert "deadline reached: not starting zero-shot" in out and "deadline reached: not starting main ci" in out
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
