"""The GPU study's report (``results/study``, written by ``python -m medcore study``): DataFrames for the book's
intro and Results pages, computed from the records only.

- :func:`load_study` - the records and the headline models: zero-shot bf16 and NF4, the main QLoRA run, its
  repeats over seeds (``<name>-seed<s>-fine-tuned``) and the k-fold run; ablations apart;
- :func:`accuracy_long` - accuracy with its Wilson interval per model and metric: standard, and where a record
  has them the position-robust circular and permutation-debiased accuracies; :func:`accuracy_table` shows it;
- :func:`verdict` - the three sentences that answer the book's question;
- :func:`letter_shares` - the predicted-letter distribution of each model beside the key's;
- :func:`subject_long` / :func:`tier_table` - accuracy per subject and per tier (the seed's question types);
- :func:`paired_table` - exact McNemar tests, zero-shot against fine-tuned, on every metric;
- :func:`seed_table` - mean and spread over the seeds; :func:`ablation_frame` - the ablations with readable labels;
- :func:`final_eval_loss` - the main run's last validation loss.

A record scored before exact scoring (no 1/k ``credit`` column: bf16 ties given to the earliest letter) or
without option rotations (no circular / debiased accuracy) is labelled "scored with ties".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcore.report import book as rp
from medcore.report import position_metrics as pos
from medcore.report import tables as an
from medcore.records import load_loss_history, load_predictions, load_runs

METRICS = {"standard": "accuracy", "circular": "circular_accuracy", "debiased": "debiased_accuracy"}
METRIC_NAMES = {"standard": "standard", "circular": "circular (right in all four orders)",
                "debiased": "permutation-debiased"}
TIES_LABEL = "scored with ties"
# the seed study's question types, matched to medcore's subject tiers (medcore.subjects.SUBJECT_TIERS)
SEED_TYPES = {"pre-clinical": "basic", "para-clinical": "intermediate", "clinical": "advanced"}
ABLATION_LABELS = {  # medcore.flows.study.ABLATIONS -> what a reader calls the setting, and its family
    "abl-bf16-lora": ("bf16 LoRA (no quantization)", "precision"),
    "abl-int8": ("int8 (LLM.int8) + LoRA", "precision"),
    "abl-nf4-nodq": ("NF4 without double quantization", "precision"),
    "abl-fp4-dq": ("FP4 + double quantization", "precision"),
    "abl-r4": ("LoRA rank 4", "rank"),
    "abl-r64": ("LoRA rank 64", "rank"),
    "abl-attention": ("LoRA on attention only", "layers"),
    "abl-dora": ("DoRA instead of LoRA", "method"),
    "abl-no-shuffle": ("options in their original order", "training data"),
    "abl-explanation": ("trained on the explanations", "training data"),
    "abl-llm-keyed": ("LLM-keyed training questions", "training data"),
}


@dataclass
class Study:
    """The records of one study folder and its headline models (rows of :func:`records.results_table`)."""
    folder: Path
    runs: pd.DataFrame
    table: pd.DataFrame
    models: dict[str, pd.Series] = field(default_factory=dict)  # key -> results_table row
    seeds: list[str] = field(default_factory=list)               # run ids of the main recipe over seeds
    ablations: list[str] = field(default_factory=list)
    exact: dict[str, bool] = field(default_factory=dict)         # run id -> scored with 1/k tie credit
    answers: pd.Series | None = None                             # the key's letters (0-3) of the main run

    @property
    def ok(self) -> bool:
        return "tuned" in self.models and "base" in self.models

    def run(self, key: str) -> pd.Series:
        return self.runs.set_index("run_id").loc[self.models[key]["run"]]

    def label(self, key: str) -> str:
        return model_label(key, self.models[key], self.runs)

    def robust(self, run: str) -> bool:
        """Whether the record has the position-robust metrics and split its ties."""
        row = self.runs.set_index("run_id").loc[run]
        return self.exact.get(run, False) and pd.notna(an.get(row, "circular_accuracy", default=np.nan))


def load_study(folder: str | Path) -> Study:
    """The study's records; ``Study.ok`` is False without a zero-shot and a fine-tuned record."""
    folder = Path(folder)
    runs = load_runs(folder) if folder.is_dir() else pd.DataFrame()
    table = an.results_table(runs)
    study = Study(folder, runs, table)
    if table.empty:
        return study
    ablation = table["run"].str.match(r"abl-") | table["run"].isin([f"{n}-fine-tuned" for n in ABLATION_LABELS])
    study.ablations = table.loc[ablation & (table["role"] == "fine-tuned"), "run"].tolist()
    main = table[~ablation]
    tuned = main[(main["role"] == "fine-tuned") & (main["precision"] != "bf16")]
    plain = tuned[~tuned["run"].str.contains(r"-seed\d+-fine-tuned$")]
    if len(tuned):
        first = (plain if len(plain) else tuned).iloc[0]
        study.models["tuned"] = first
        stem = first["run"].removesuffix("-fine-tuned")
        study.seeds = [first["run"]] + sorted(r for r in tuned["run"] if re.fullmatch(rf"{re.escape(stem)}-seed\d+-fine-tuned", r))
        base = main[main["run"] == first["baseline_run"]]
        if len(base):
            study.models["base"] = base.iloc[0]
    for key, mask in (("bf16", (main["role"] == "zero-shot") & (main["precision"] == "bf16")),
                      ("kfold", main["role"] == "fine-tuned-kfold")):
        if mask.any():
            study.models[key] = main[mask].iloc[0]
    for run in table["run"]:
        if (folder / run / "predictions.parquet").is_file():
            preds = load_predictions(folder / run)
            study.exact[run] = pos.scored_exactly(preds)
            if "tuned" in study.models and run == study.models["tuned"]["run"]:
                study.answers = preds["answer"]
    return study


def model_label(key: str, row: pd.Series, runs: pd.DataFrame) -> str:
    precision = {"nf4+dq": "NF4+DQ", "bf16": "bf16"}.get(str(row["precision"]), str(row["precision"]))
    if key in ("base", "bf16"):
        return f"zero-shot {precision}"
    if key == "kfold":
        k = an.get(runs.set_index("run_id").loc[row["run"]], "k", default="k")
        return f"QLoRA {precision}, {int(k)}-fold"
    return f"QLoRA {precision}"


ORDER = ("bf16", "base", "tuned", "kfold")


def accuracy_long(study: Study, keys: tuple[str, ...] = ORDER) -> pd.DataFrame:
    """One row per headline model and metric the record has: model, key, run, metric, accuracy, ci_low,
    ci_high, n, scoring ("exact" or :data:`TIES_LABEL`)."""
    rows = []
    for key in (k for k in keys if k in study.models):
        row, run = study.models[key], study.run(key)
        for metric, col in METRICS.items():
            value = an.get(run, col)
            if value is None:
                continue
            prefix = "" if metric == "standard" else f"{metric}_"
            rows.append({"model": study.label(key), "key": key, "run": row["run"], "metric": metric,
                         "accuracy": float(value), "ci_low": an.get(run, f"{prefix}ci_low", default=np.nan),
                         "ci_high": an.get(run, f"{prefix}ci_high", default=np.nan), "n": int(row["n"]),
                         "scoring": "exact" if study.robust(row["run"]) else TIES_LABEL})
    return pd.DataFrame(rows, columns=["model", "key", "run", "metric", "accuracy", "ci_low", "ci_high", "n",
                                       "scoring"])


def accuracy_table(long: pd.DataFrame) -> pd.DataFrame:
    """:func:`accuracy_long` as the reader's table: model, questions, one column per metric, scoring, record."""
    if long.empty:
        return pd.DataFrame(columns=["model", "questions", "standard", "scoring", "record"])
    rows = []
    for (model, run), part in long.groupby(["model", "run"], sort=False):
        cells = {METRIC_NAMES[m]: rp.interval(r.accuracy, r.ci_low, r.ci_high) for r in part.itertuples()
                 for m in [r.metric]}
        rows.append({"model": model, "questions": f"{part['n'].iloc[0]:,}", **cells,
                     "scoring": part["scoring"].iloc[0], "record": run})
    out = pd.DataFrame(rows)
    return out[[c for c in ["model", "questions", *METRIC_NAMES.values(), "scoring", "record"] if c in out]]


def majority(study: Study) -> dict[str, Any] | None:
    """Always answering the key's most frequent letter, on the main run's questions."""
    return pos.majority_letter(study.answers) if study.answers is not None else None


def letter_shares(study: Study, keys: tuple[str, ...] = ORDER, seeds: bool = False) -> pd.DataFrame:
    """Predicted-letter shares of each headline model (with ``seeds``, each repeat of the main run over seeds
    too) and the key's: model, letter, share, predicted (count), kind ("model" / "answer key"), scoring."""
    rows, key_shares = [], None
    named = [(study.label(k), study.models[k]["run"]) for k in keys if k in study.models]
    if seeds and len(study.seeds) > 1:
        at = next((i for i, (_, run) in enumerate(named) if run == study.seeds[0]), len(named) - 1) + 1
        runs = study.runs.set_index("run_id")
        named[at:at] = [(f"{study.label('tuned')}, seed {int(an.get(runs.loc[r], 'config.train.seed', default=0))}", r)
                        for r in study.seeds[1:]]
    for label, run in named:
        letters = pd.DataFrame(an.get(study.runs.set_index("run_id").loc[run], "letters", default=[]) or [])
        if letters.empty:
            continue
        key_shares = letters
        scoring = "exact" if study.exact.get(run) else TIES_LABEL
        rows += [{"model": label, "letter": r.letter, "share": r.predicted_share,
                  "predicted": r.predicted, "kind": "model", "scoring": scoring} for r in letters.itertuples()]
    if key_shares is not None:
        rows += [{"model": "answer key", "letter": r.letter, "share": r.answer_share, "predicted": r.answer,
                  "kind": "answer key", "scoring": ""} for r in key_shares.itertuples()]
    return pd.DataFrame(rows, columns=["model", "letter", "share", "predicted", "kind", "scoring"])


def subject_long(study: Study, keys: tuple[str, ...] = ("base", "tuned")) -> pd.DataFrame:
    """Accuracy per subject with its interval, one row per subject and model (``records.breakdown``)."""
    labels = {study.models[k]["run"]: study.label(k) for k in keys if k in study.models}
    return an.breakdown(study.runs, "subject", labels) if labels else pd.DataFrame()


def tier_table(study: Study) -> pd.DataFrame:
    """Per tier (named as the seed's question type): questions, zero-shot and fine-tuned accuracy with
    intervals, and the difference."""
    long = an.breakdown(study.runs, "tier", {study.models[k]["run"]: k for k in ("base", "tuned")}) if study.ok \
        else pd.DataFrame()
    if long.empty or set(long["model"]) != {"base", "tuned"}:
        return pd.DataFrame(columns=["question type (seed)", "tier (medcore)", "questions", "zero-shot",
                                     "fine-tuned", "difference"])
    wide = long.pivot_table(index="tier", columns="model", values=["accuracy", "ci_low", "ci_high", "n"], sort=False)
    rows = []
    for tier in [t for t in (*SEED_TYPES, "unknown") if t in wide.index]:
        r = wide.loc[tier]
        rows.append({"question type (seed)": SEED_TYPES.get(tier, MISSING_TYPE), "tier (medcore)": tier,
                     "questions": f"{int(r[('n', 'tuned')]):,}",
                     "zero-shot": rp.interval(r[("accuracy", "base")], r[("ci_low", "base")], r[("ci_high", "base")]),
                     "fine-tuned": rp.interval(r[("accuracy", "tuned")], r[("ci_low", "tuned")], r[("ci_high", "tuned")]),
                     "difference": rp.points(r[("accuracy", "tuned")] - r[("accuracy", "base")])})
    return pd.DataFrame(rows)


MISSING_TYPE = "(no subject)"
PAIRED_NAMES = {"standard": "standard accuracy", "circular": "circular accuracy", "debiased": "debiased accuracy",
                **{f"predicted_{c}": f"answers {c}" for c in "ABCD"},
                **{f"recall_{c}": f"right when the key is {c}" for c in "ABCD"}}


def paired_frame(study: Study) -> pd.DataFrame:
    """:func:`position_metrics.metric_tests` of the zero-shot against the main fine-tuned record (empty without both
    records' predictions)."""
    if not study.ok:
        return pd.DataFrame()
    folders = [study.folder / study.models[k]["run"] for k in ("base", "tuned")]
    if not all((f / "predictions.parquet").is_file() for f in folders):
        return pd.DataFrame()
    return pos.metric_tests(load_predictions(folders[0]), load_predictions(folders[1]))


def paired_table(tests: pd.DataFrame) -> pd.DataFrame:
    if tests.empty:
        return pd.DataFrame(columns=["measure", "zero-shot", "fine-tuned", "difference", "b", "c", "McNemar p"])
    tests = tests.set_index("metric").loc[[m for m in PAIRED_NAMES if m in set(tests["metric"])]].reset_index()
    return pd.DataFrame({"measure": tests["metric"].map(PAIRED_NAMES), "zero-shot": tests["before"].map(rp.pct),
                         "fine-tuned": tests["after"].map(rp.pct), "difference": tests["difference"].map(rp.points),
                         "b": tests["b"], "c": tests["c"], "McNemar p": tests["pvalue"].map(rp.pvalue)})


def seed_table(study: Study) -> pd.DataFrame:
    """Mean, sd and range over the main recipe's seeds, per metric (empty below two seeds)."""
    runs = study.runs[study.runs["run_id"].isin(study.seeds)] if len(study.seeds) > 1 else pd.DataFrame()
    spread = pos.seed_spread(runs)
    if spread.empty:
        return pd.DataFrame(columns=["measure", "seeds", "mean", "sd", "lowest", "highest"])
    names = {"accuracy": "standard accuracy", "circular_accuracy": "circular accuracy",
             "debiased_accuracy": "debiased accuracy", "predicted_share_A": "answers A"}
    return pd.DataFrame({"measure": spread["metric"].map(names).fillna(spread["metric"]), "seeds": spread["seeds"],
                         "mean": spread["mean"].map(rp.pct), "sd": spread["sd"].map(lambda v: rp.points(v).lstrip("+")),
                         "lowest": spread["min"].map(rp.pct), "highest": spread["max"].map(rp.pct)})


def ablation_frame(study: Study) -> pd.DataFrame:
    """The main run and each ablation: setting, family, accuracy with interval (standard, and debiased where
    recorded), training minutes and peak memory, run; for ``plots_accuracy.ablation_plot``."""
    if study.runs.empty:
        return pd.DataFrame()
    runs, rows = study.runs.set_index("run_id"), []
    named = ([("main", study.models["tuned"]["run"])] if "tuned" in study.models else []) + \
        [(r.removesuffix("-fine-tuned"), r) for r in study.ablations]
    for name, run in named:
        r = runs.loc[run]
        label, family = ABLATION_LABELS.get(name, (name, "other"))
        if name == "main":
            label, family = f"main: QLoRA NF4+DQ, rank {an.get(r, 'config.lora.r')}, {an.get(r, 'config.lora.targets')}", "main recipe"
        train = runs.loc[f"{an.get(r, 'config.name')}-train"] if f"{an.get(r, 'config.name')}-train" in runs.index else {}
        rows.append({"setting": label, "family": family, "run": run, "accuracy": float(r["accuracy"]),
                     "ci_low": an.get(r, "ci_low"), "ci_high": an.get(r, "ci_high"),
                     "debiased": an.get(r, "debiased_accuracy", default=np.nan),
                     "debiased_low": an.get(r, "debiased_ci_low", default=np.nan),
                     "debiased_high": an.get(r, "debiased_ci_high", default=np.nan),
                     "train_minutes": (an.get(train, "wall_seconds", default=np.nan)) / 60,
                     "peak_memory_bytes": an.get(train, "peak_memory_bytes", default=np.nan),
                     "scoring": "exact" if study.robust(run) else TIES_LABEL})
    return pd.DataFrame(rows)


def ablation_table(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=["setting", "family", "accuracy", "training", "peak memory", "record"])
    out = pd.DataFrame({"setting": frame["setting"], "family": frame["family"],
                        "accuracy": [rp.interval(*v) for v in zip(frame["accuracy"], frame["ci_low"], frame["ci_high"])]})
    if frame["debiased"].notna().any():
        out["debiased"] = [rp.interval(*v) for v in zip(frame["debiased"], frame["debiased_low"], frame["debiased_high"])]
    out["training"] = frame["train_minutes"].map(lambda m: rp.MISSING if pd.isna(m) else f"{m:.1f} min")
    out["peak memory"] = frame["peak_memory_bytes"].map(rp.gb)
    out["record"] = frame["run"]
    return out


def final_eval_loss(study: Study) -> dict[str, Any] | None:
    """The main run's last logged validation loss: loss, step, questions, record."""
    if "tuned" not in study.models:
        return None
    name = an.get(study.run("tuned"), "config.name")
    folder = study.folder / f"{name}-train"
    history = load_loss_history(folder) if folder.is_dir() else pd.DataFrame()
    if "eval_loss" not in history:
        return None
    last = history.dropna(subset=["eval_loss"]).iloc[-1]
    runs = study.runs.set_index("run_id")
    n_eval = an.get(runs.loc[folder.name], "n_eval") if folder.name in runs.index else None
    return {"loss": float(last["eval_loss"]), "step": int(last["step"]), "questions": n_eval, "record": folder.name}


def facts(study: Study) -> str:
    """Where the records come from: folder, command, device, commit, model and its weights."""
    if not study.ok:
        return (f"No study record under `results/{study.folder.name}/` yet: `python -m medcore study` on a GPU writes "
                "them, and this page then shows them.")
    r = study.run("tuned")
    source = str(an.get(r, "config.model.source", default="?"))
    text = (f"Records under `results/{study.folder.name}/`, written by `python -m medcore study` on "
            f"{an.get(r, 'env.device', default='?')} (git commit `{str(an.get(r, 'env.git_commit', default='?'))[:10]}`), "
            f"model `{source}` with {an.weights_label(r)} weights")
    if source.startswith("embedded:"):
        text += ("; its bf16 weights are dequantized from the 4-bit GGUF file it is distributed as, so the bf16 row "
                 "is not Google's bf16 checkpoint")
    return text + "."


def favourite(shares: pd.DataFrame, model: str) -> tuple[str, float]:
    """The letter ``model`` chooses most often in :func:`letter_shares`, and its share."""
    part = shares[shares["model"] == model].set_index("letter")["share"]
    return str(part.idxmax()), float(part.max())


def prior_sentence(study: Study) -> str:
    """The letter-prior finding in numbers: the key's commonest letter, each model's favourite letter and its
    share against the key's share of that letter, the ties."""
    maj = majority(study)
    shares = letter_shares(study, ("base", "tuned"), seeds=True)
    if maj is None or shares.empty:
        return "No letter distribution recorded."
    letter = maj["letter"]
    key = shares[shares["kind"] == "answer key"].set_index("letter")["share"]
    text = (f"{letter} is the key's most frequent letter ({rp.pct(maj['accuracy'])} of the questions), so always "
            f"answering {letter} scores {rp.pct(maj['accuracy'])}. Each model's favourite letter: "
            + "; ".join(f"{m}, {fav} on {rp.pct(share)} of the questions (the key: {rp.pct(key[fav])})"
                        for m in shares.loc[shares["kind"] == "model", "model"].unique()
                        for fav, share in [favourite(shares, m)]) + ".")
    ties = [(study.label(k), an.get(study.run(k), "ties")) for k in ("base", "tuned") if k in study.models]
    if any(not study.exact.get(study.models[k]["run"], False) for k in ("base", "tuned") if k in study.models):
        text += (f" These records were {TIES_LABEL}: " + ", ".join(f"{rp.pct(t / study.models['tuned']['n'], 0)} of "
                 f"the answers of {m}" for m, t in ties if t is not None) + " were exact bf16 ties, each given to the "
                 "earliest tied letter, which is A whenever A tied.")
    return text
