"""Tables built from run records, for the notebooks and the book.

Everything here reads what `medcore.flows.workflows` (and the GPU study, `medcore.flows.study`) wrote - a
``records.load_runs`` frame, or a record's predictions - and returns a DataFrame; nothing is measured here and
no figure is typed in. The improvement of a fine-tuned model is recomputed from the two measured accuracies;
the paired test matches the two models' predictions by question id.

- :func:`get`, :func:`role_of`, :func:`weights_label`: reading one record's row, random weights always named;
- :func:`results_table` / :func:`format_results_table`: size, accuracy with its interval, peak memory,
  latency, throughput and improvement over the zero-shot model of the same precision, one row per scoring record;
- :func:`paired_test` / :func:`paired_tests`: exact McNemar test and a paired bootstrap interval of the
  difference, zero-shot against fine-tuned, on the questions both answered;
- :func:`ablation_table`, :func:`breakdown`, :func:`cost_table`, :func:`train_table`, :func:`loss_long`,
  :func:`predictions_long`, :func:`footprint_tables`, :func:`records_overview`; :func:`markdown_table`.

The position-robust metrics (circular and debiased accuracy, letter shares, the spread over seeds) are in
:mod:`medcore.report.position_metrics`; the data tables of notebook 01 in :mod:`medcore.report.data_tables`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcore import stats
from medcore.records import load_loss_history, load_predictions

RANDOM_LABEL = "random weights (accuracy meaningless)"
SCORING_ROLES = ("zero-shot", "fine-tuned", "fine-tuned-kfold")  # "fold": one fold of a k-fold run
TUNED_ROLES = ("fine-tuned", "fine-tuned-kfold")


def get(row: Any, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` that ``row`` (a Series or dict) has with a value that is not None/NaN."""
    for key in keys:
        value = row.get(key) if hasattr(row, "get") else None
        if value is not None and not (isinstance(value, float) and value != value):
            return value
    return default


def weights_label(row: Any) -> str:
    """"real", RANDOM_LABEL or "unknown", from ``real_weights`` (metrics or environment) or the model source."""
    real = get(row, "real_weights", "env.real_weights")
    source = str(get(row, "config.model.source", "env.model.source", default=""))
    if real is None and source:
        real = not source.startswith("random:")
    return "unknown" if real is None else "real" if bool(real) else RANDOM_LABEL


def label_weights(df: pd.DataFrame, real: bool) -> pd.DataFrame:
    """``df`` with a first column ``weights``, so that no table hides a random-weight run."""
    out = df.drop(columns="weights", errors="ignore").copy()
    out.insert(0, "weights", "real" if real else RANDOM_LABEL)
    return out


def role_of(row: Any) -> str:
    """A record's ``role`` (zero-shot, fine-tuned, train, ...), "" where it has none."""
    return str(get(row, "role", default=""))


# ---- results table --------------------------------------------------------------------------------------------

def baseline_of(row: Any, runs: pd.DataFrame) -> str | None:
    """The zero-shot record a fine-tuned record is compared with: ``baseline_run`` if recorded, else the zero-shot
    record of the same model, precision and number of questions (the same config name first)."""
    if get(row, "baseline_run"):
        return get(row, "baseline_run")
    if role_of(row) not in TUNED_ROLES:
        return None
    candidates = [(get(o, "config.name") != get(row, "config.name"), o["run_id"]) for _, o in runs.iterrows()
                  if role_of(o) == "zero-shot" and get(o, "precision") == get(row, "precision")
                  and get(o, "config.model.source") == get(row, "config.model.source") and get(o, "n") == get(row, "n")]
    return min(candidates)[1] if candidates else None


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per scoring record (zero-shot, fine-tuned, k-fold): run, role, model, weights, precision, n,
    accuracy, ci_low, ci_high, size_gb (``footprint_bytes``), peak_memory_gb, latency_ms (median, batch 1),
    qps (best batch), improvement_pct = (accuracy - baseline accuracy) / baseline accuracy x 100 against
    :func:`baseline_of`, and baseline_run. Missing measurements are NaN."""
    columns = ["run", "role", "model", "weights", "precision", "n", "accuracy", "ci_low", "ci_high", "size_gb",
               "peak_memory_gb", "latency_ms", "qps", "improvement_pct", "baseline_run"]
    if runs is None or len(runs) == 0 or "accuracy" not in runs.columns:
        return pd.DataFrame(columns=columns)
    scored = runs[runs["accuracy"].notna() & runs.get("role", pd.Series("", index=runs.index)).isin(SCORING_ROLES)]
    accuracy = dict(zip(scored["run_id"], scored["accuracy"]))
    rows = []
    for _, r in scored.iterrows():
        base = baseline_of(r, scored)
        before = accuracy.get(base) if base else None
        size, peak = get(r, "footprint_bytes"), get(r, "cost.peak_memory_bytes", "peak_memory_bytes")
        rows.append({
            "run": r["run_id"], "role": role_of(r), "model": get(r, "config.model.source", "env.model.source", default="?"),
            "weights": weights_label(r), "precision": get(r, "precision", default="?"), "n": get(r, "n"),
            "accuracy": float(r["accuracy"]), "ci_low": get(r, "ci_low", default=np.nan),
            "ci_high": get(r, "ci_high", default=np.nan),
            "size_gb": size / 1e9 if size is not None else np.nan,
            "peak_memory_gb": peak / 1e9 if peak is not None else np.nan,
            "latency_ms": get(r, "cost.latency_ms_median", default=np.nan),
            "qps": get(r, "cost.best_qps", default=np.nan),
            "improvement_pct": (r["accuracy"] - before) / before * 100 if before else np.nan, "baseline_run": base,
        })
    return pd.DataFrame(rows, columns=columns)


def _pct(v: Any) -> str:
    return "" if pd.isna(v) else f"{v:.1%}"


def _num(v: Any, digits: int = 3) -> str:
    return "" if pd.isna(v) else f"{v:.{digits}g}"


def format_results_table(table: pd.DataFrame) -> pd.DataFrame:
    """A readable copy of :func:`results_table`: accuracy as "x% [low%, high%]", GB/ms/q/s to 3 digits."""
    return pd.DataFrame({
        "run": table["run"], "weights": table["weights"], "precision": table["precision"],
        "questions": table["n"].map(lambda v: "" if pd.isna(v) else str(int(v))),
        "accuracy [95% CI]": [f"{_pct(a)} [{_pct(lo)}, {_pct(hi)}]" for a, lo, hi in
                              zip(table["accuracy"], table["ci_low"], table["ci_high"])],
        "improvement": table["improvement_pct"].map(lambda v: "" if pd.isna(v) else f"{v:+.1f} %"),
        "size (GB)": table["size_gb"].map(_num), "peak memory (GB)": table["peak_memory_gb"].map(_num),
        "latency (ms)": table["latency_ms"].map(_num), "questions/s": table["qps"].map(_num),
    })


# ---- paired comparison ----------------------------------------------------------------------------------------

def paired_test(before: pd.DataFrame, after: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Exact McNemar test of two prediction frames on the questions both answered, matched by ``id``.

    Returns n (matched questions), unmatched (in one frame only), b (only ``before`` right), c (only ``after``
    right), pvalue, the two accuracies on the matched questions, difference (after - before) and its paired
    bootstrap 95% interval. Duplicate ids are an error: a pairing must be one to one.
    """
    for name, df in (("before", before), ("after", after)):
        if df["id"].duplicated().any():
            raise ValueError(f"{name} predictions repeat question ids; pairing needs one row per question")
    both = before[["id", "correct"]].merge(after[["id", "correct"]], on="id", suffixes=("_before", "_after"))
    a, b = both["correct_before"].to_numpy(bool), both["correct_after"].to_numpy(bool)
    test = stats.mcnemar_exact(a, b)
    diff = b.astype(float) - a.astype(float)
    low, high = stats.bootstrap_interval(diff, seed=seed) if len(diff) else (np.nan, np.nan)
    return {"n": test["n"], "unmatched": len(before) + len(after) - 2 * len(both), "b": test["b"], "c": test["c"],
            "pvalue": test["pvalue"], "accuracy_before": float(a.mean()) if len(a) else np.nan,
            "accuracy_after": float(b.mean()) if len(b) else np.nan, "difference": float(diff.mean()) if len(diff)
            else np.nan, "difference_ci_low": low, "difference_ci_high": high}


def paired_tests(table: pd.DataFrame, results_dir: str | Path) -> pd.DataFrame:
    """:func:`paired_test` for every row of :func:`results_table` that has a baseline, from the two records'
    predictions in ``results_dir`` (a pair without predictions is left out): before, after, the test's columns."""
    rows = []
    for _, r in table.dropna(subset=["baseline_run"]).iterrows():
        if not all((Path(results_dir) / run / "predictions.parquet").is_file() for run in (r["baseline_run"], r["run"])):
            continue
        before = load_predictions(Path(results_dir) / r["baseline_run"])
        after = load_predictions(Path(results_dir) / r["run"])
        rows.append({"before": r["baseline_run"], "after": r["run"], **paired_test(before, after)})
    return pd.DataFrame(rows, columns=["before", "after", "n", "unmatched", "b", "c", "pvalue", "accuracy_before",
                                       "accuracy_after", "difference", "difference_ci_low", "difference_ci_high"])


def format_paired_tests(tests: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "zero-shot": tests["before"], "fine-tuned": tests["after"], "questions": tests["n"],
        "only zero-shot right (b)": tests["b"], "only fine-tuned right (c)": tests["c"],
        "difference [95% CI]": [f"{d:+.1%} [{lo:+.1%}, {hi:+.1%}]" for d, lo, hi in
                                zip(tests["difference"], tests["difference_ci_low"], tests["difference_ci_high"])],
        "McNemar exact p": tests["pvalue"].map(lambda p: f"{p:.2g}"),
    })


# ---- other tables ---------------------------------------------------------------------------------------------

def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuned records whose configs differ: setting (the differing ``section.field=value`` pairs, config
    name left out), ablation (the fields), accuracy with its interval, n, weights, and the training record's
    wall time, examples/s and peak memory where a ``<name>-train`` record exists, and the record's ``run_note``
    (how it shared its machine, which its timings depend on). Empty below two records."""
    columns = ["run", "setting", "ablation", "precision", "accuracy", "ci_low", "ci_high", "n", "weights", "train_seconds",
               "examples_per_s", "train_peak_memory_gb", "train_resident_memory_gb", "run_note"]
    if runs is None or len(runs) == 0 or "accuracy" not in runs.columns or "role" not in runs.columns:
        return pd.DataFrame(columns=columns)
    tuned = runs[runs["accuracy"].notna() & (runs["role"] == "fine-tuned")]
    if len(tuned) < 2:
        return pd.DataFrame(columns=columns)
    skip = ("config.name", "config.results_dir")
    varying = [c for c in tuned.columns if c.startswith("config.") and c not in skip
               and tuned[c].astype(str).nunique(dropna=False) > 1]
    trains = runs.set_index("run_id")
    rows = []
    for _, r in tuned.iterrows():
        keys = [c.removeprefix("config.") for c in varying]
        t = trains.loc[f"{r['config.name']}-train"] if f"{r.get('config.name')}-train" in trains.index else {}
        peak = get(t, "peak_memory_bytes")
        rows.append({"run": r["run_id"], "setting": ", ".join(f"{k}={r['config.' + k]}" for k in keys) or r["run_id"],
                     "ablation": ", ".join(keys) or "repeat", "precision": get(r, "precision"),
                     "accuracy": float(r["accuracy"]),
                     "ci_low": get(r, "ci_low"), "ci_high": get(r, "ci_high"), "n": get(r, "n"),
                     "weights": weights_label(r), "train_seconds": get(t, "wall_seconds", default=np.nan),
                     "examples_per_s": get(t, "examples_per_s", default=np.nan),
                     "train_peak_memory_gb": peak / 1e9 if peak else np.nan,
                     "train_resident_memory_gb": (get(t, "resident_memory_bytes") or np.nan) / 1e9,
                     "run_note": get(r, "env.run_note", default=None) or None})
    return pd.DataFrame(rows, columns=columns)


def breakdown(runs: pd.DataFrame, by: str, labels: dict[str, str]) -> pd.DataFrame:
    """Long table of the ``by_<by>`` accuracies (tier, choice_type, subject) of the records in ``labels``
    (run id -> label shown as ``model``), for ``plots_accuracy.accuracy_by_group``."""
    parts = []
    indexed = runs.set_index("run_id")
    for run, label in labels.items():
        value = indexed.loc[run].get(f"by_{by}") if run in indexed.index else None
        if isinstance(value, list) and value:
            part = pd.DataFrame(value).drop(columns="index", errors="ignore").rename(columns={by: "group"})
            parts.append(part.assign(model=label))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["group", "n", "accuracy", "model"])
    return out.rename(columns={"group": by})


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Scoring cost of every record with a ``cost`` measurement: run, precision, device, latency_ms (median,
    batch 1) and its p90, qps at batch 1, best qps and its batch size, peak_memory_mb and how it was measured."""
    rows = []
    for _, r in runs.iterrows():
        if get(r, "cost.latency_ms_median") is None:
            continue
        throughput = get(r, "cost.throughput", default=[]) or []
        qps1 = next((t["qps"] for t in throughput if t["batch_size"] == 1), np.nan)
        rows.append({"run": r["run_id"], "precision": get(r, "precision", default="?"),
                     "device": get(r, "cost.conditions.device_name", default="?"),
                     "latency_ms": r["cost.latency_ms_median"], "latency_ms_p90": get(r, "cost.latency_ms_p90"),
                     "qps_batch_1": qps1, "best_qps": get(r, "cost.best_qps"),
                     "best_batch_size": get(r, "cost.best_batch_size"),
                     "peak_memory_mb": get(r, "cost.peak_memory_bytes", default=np.nan) / 1e6,
                     "peak_memory_kind": get(r, "cost.peak_memory_kind")})
    return pd.DataFrame(rows, columns=["run", "precision", "device", "latency_ms", "latency_ms_p90", "qps_batch_1",
                                       "best_qps", "best_batch_size", "peak_memory_mb", "peak_memory_kind"])


def train_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Training records: run, precision, questions, steps, final train loss, examples/s, real tokens/s,
    wall seconds, peak memory (GB) and trainable parameters."""
    rows = [{"run": r["run_id"], "precision": get(r, "precision"), "questions": get(r, "n_train"),
             "steps": get(r, "global_step"), "train loss": get(r, "train_loss"),
             "examples/s": get(r, "examples_per_s"), "real tokens/s": get(r, "real_tokens_per_s"),
             "wall seconds": get(r, "wall_seconds"), "peak memory (GB)": (get(r, "peak_memory_bytes") or np.nan) / 1e9,
             "trainable parameters": get(r, "parameters.trainable")}
            for _, r in runs.iterrows() if role_of(r) == "train"]
    return pd.DataFrame(rows)


def predictions_long(records: dict[str, Path]) -> pd.DataFrame:
    """The predictions of several records (label -> record folder) in one frame: model, id, answer, prediction,
    correct, confidence; for ``plots_accuracy.position_bias`` and ``plots_accuracy.reliability_diagram``."""
    return pd.concat([load_predictions(path).assign(model=label).rename(columns={"pred": "prediction", "prob": "confidence"})
                      [["model", "id", "answer", "prediction", "correct", "confidence"]]
                      for label, path in records.items()], ignore_index=True)


def loss_long(results_dir: str | Path, run: str) -> pd.DataFrame:
    """A training record's loss history in long form (step, loss, split = train / eval)."""
    h = load_loss_history(Path(results_dir) / run)
    parts = [h[["step", col]].dropna().rename(columns={col: "loss"}).assign(split=split)
             for col, split in (("loss", "train"), ("eval_loss", "eval")) if col in h]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "loss", "split"])


def footprint_tables(run: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From a ``<name>-footprint`` record (``records.load_run``): the per-precision summary (with size relative
    to bf16) and the long (precision, kind, bytes) table for ``plots.footprint_bars``."""
    summary = pd.DataFrame(run["metrics"]["footprint"])
    if "total_bytes" in summary and "bf16" in set(summary["precision"]):
        summary["size_vs_bf16"] = summary["total_bytes"] / summary.loc[summary["precision"] == "bf16",
                                                                         "total_bytes"].iloc[0]
    kinds = [c for c in summary.columns if c.endswith("_bytes") and c.split("_")[0] in
             ("embedding", "attention", "mlp", "norm", "other")] + ["quant_constant_bytes", "buffer_bytes"]
    long = summary.melt(id_vars="precision", value_vars=[k for k in kinds if k in summary], var_name="kind",
                        value_name="bytes").dropna()
    long["kind"] = long["kind"].str.removesuffix("_bytes").str.replace("quant_constant", "quant constants")
    return summary, long[long["bytes"] > 0].reset_index(drop=True)


def error_summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Per precision and module kind: quantized layers, mean and max relative error."""
    if errors.empty:
        return errors
    return (errors.groupby(["precision", "kind"], sort=False)["error"]
            .agg(layers="size", mean="mean", max="max").reset_index())


def records_overview(runs: pd.DataFrame) -> pd.DataFrame:
    """Every record of a results folder: run, role, weights, model, precision, device, git commit."""
    return pd.DataFrame([{"run": r["run_id"], "role": role_of(r), "weights": weights_label(r),
                          "model": get(r, "config.model.source", default="?"), "precision": get(r, "precision", default=""),
                          "device": get(r, "env.device", default=""),
                          "git commit": str(get(r, "env.git_commit", default=""))[:10]} for _, r in runs.iterrows()],
                        columns=["run", "role", "weights", "model", "precision", "device", "git commit"])


def markdown_table(df: pd.DataFrame) -> str:
    """A MyST pipe table of a DataFrame; floats to 4 significant digits (thousands as whole numbers)."""
    def cell(v: Any) -> str:
        text = (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}") if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
