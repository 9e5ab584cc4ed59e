"""The numbered notebooks' tables in the reader's units: each takes what ``medcore.report.tables`` returns for a pipeline
run's records and keeps at most about seven columns, numbers formatted (%, MB, GB, ms), missing values as "—".
A random-weight run says so in a ``weights`` column.
"""
from __future__ import annotations

import pandas as pd

from medcore.report import book as rp
from medcore.report import tables as an


def _weights(df: pd.DataFrame, real: bool) -> pd.DataFrame:
    """A last column ``weights`` naming a random-weight run, so that no table hides one."""
    return df if real else df.assign(weights=an.RANDOM_LABEL)


def split_view(overview: pd.DataFrame) -> pd.DataFrame:
    """:func:`data_tables.split_overview` without its source column (named under the table instead)."""
    return overview.drop(columns=["source"], errors="ignore")


def counts_view(counts: pd.DataFrame, column: str, shares: bool = True) -> pd.DataFrame:
    """:func:`data_tables.category_counts` as one row per value: questions per split and, with ``shares``, their
    share of the split."""
    wide = counts.pivot_table(index=column, columns="split", values=["count", "share"], fill_value=0, sort=False)
    out = pd.DataFrame({column: wide.index})
    for split in [s for s in ("train", "eval") if ("count", s) in wide.columns]:
        out[f"{split} questions"] = wide[("count", split)].astype(int).map(rp.count).to_numpy()
        if shares:
            out[f"{split} share"] = wide[("share", split)].map(rp.pct).to_numpy()
    return out


def length_view(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`data_tables.length_summary` in tokens, whole numbers."""
    out = summary.copy()
    for col in ("count", "mean", "median", "p90", "p99", "max", "truncated"):
        if col in out:
            out[col] = out[col].map(rp.count)
    return out.rename(columns={"count": "questions"})


def footprint_view(summary: pd.DataFrame, real: bool) -> pd.DataFrame:
    """The footprint per precision preset: in memory, on disk, relative to bf16, embedding, quantization
    constants, status."""
    get = (lambda c: summary[c] if c in summary else pd.Series([None] * len(summary)))
    out = pd.DataFrame({"precision": summary["precision"], "in memory": get("total_bytes").map(rp.size),
                        "on disk": get("disk_bytes").map(rp.size),
                        "vs bf16": get("size_vs_bf16").map(lambda v: rp.pct(v, 0)),
                        "embedding": get("embedding_bytes").map(rp.size),
                        "quantization constants": get("quant_constant_bytes").map(rp.size),
                        "status": get("status").fillna("ok")})
    if (out["status"] == "ok").all():
        out = out.drop(columns="status")
    return _weights(out, real)


def footprint_costs(summary: pd.DataFrame) -> pd.DataFrame:
    """The presets whose scoring was timed: precision, latency in ms, questions/s, peak memory in MB."""
    timed = summary.dropna(subset=["latency_ms"]) if "latency_ms" in summary else summary.iloc[0:0]
    return timed.assign(peak_memory_mb=timed["peak_memory_bytes"] / 1e6) if len(timed) else timed


def error_view(errors: pd.DataFrame, real: bool) -> pd.DataFrame:
    table = an.error_summary(errors)
    if table.empty:
        return table
    out = table.assign(mean=table["mean"].map(lambda v: f"{v:.3g}"), max=table["max"].map(lambda v: f"{v:.3g}"))
    return _weights(out.rename(columns={"mean": "mean relative error", "max": "largest"}), real)


def train_view(trains: pd.DataFrame, real: bool) -> pd.DataFrame:
    """:func:`records.train_table` in seven columns."""
    if trains.empty:
        return trains
    out = pd.DataFrame({"record": trains["run"], "steps": trains["steps"].map(rp.count), "mean training loss": trains["train loss"].map(
                            lambda v: rp.MISSING if pd.isna(v) else f"{v:.3f}"),
                        "examples/s": trains["examples/s"].map(rp.number),
                        "wall time": trains["wall seconds"].map(lambda s: rp.MISSING if pd.isna(s) else f"{s:,.0f} s"),
                        "peak memory": (trains["peak memory (GB)"] * 1e9).map(rp.gb)})
    return _weights(out, real)


def loss_sentence(history: pd.DataFrame) -> str:
    """First and last training loss, and the last evaluation loss, beside the loss of a uniform guess."""
    train, evals = history[history["split"] == "train"], history[history["split"] == "eval"]
    if train.empty:
        return "No training loss logged."
    text = (f"The answer-letter training loss went from {train['loss'].iloc[0]:.3f} to {train['loss'].iloc[-1]:.3f} "
            f"over {int(train['step'].max())} optimizer steps")
    if len(evals):
        text += f"; the last evaluation loss is {evals['loss'].iloc[-1]:.3f} (step {int(evals['step'].iloc[-1])})"
    return text + ". Spreading the probability evenly over the four letters gives ln 4 \u2248 1.386."


def results_view(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`records.results_table` in the reader's units: record, weights, precision, questions, accuracy with
    its interval, change against the zero-shot record of the same precision, weights in memory."""
    if table.empty:
        return pd.DataFrame(columns=["record", "weights", "precision", "questions", "accuracy"])
    return accuracy_view(table).assign(**{"in memory": (table["size_gb"] * 1e9).map(rp.size).to_numpy()})


def accuracy_view(table: pd.DataFrame) -> pd.DataFrame:
    """A non-empty :func:`records.results_table` as record, weights, precision, questions, accuracy with its
    interval and the change against the zero-shot record of the same precision, in points."""
    accuracy = dict(zip(table["run"], table["accuracy"]))
    return pd.DataFrame({
        "record": table["run"], "weights": table["weights"], "precision": table["precision"],
        "questions": table["n"].map(rp.count),
        "accuracy": [rp.interval(a, lo, hi) for a, lo, hi in zip(table["accuracy"], table["ci_low"], table["ci_high"])],
        "against zero-shot": [rp.points(a - accuracy[b]) if isinstance(b, str) and b in accuracy else rp.MISSING
                              for a, b in zip(table["accuracy"], table["baseline_run"])]})


def paired_view(tests: pd.DataFrame) -> pd.DataFrame:
    if tests.empty:
        return pd.DataFrame(columns=["zero-shot", "fine-tuned", "questions", "b", "c", "difference", "McNemar p"])
    return pd.DataFrame({"zero-shot": tests["before"], "fine-tuned": tests["after"], "questions": tests["n"],
                         "b": tests["b"], "c": tests["c"],
                         "difference": [f"{rp.points(d)} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for d, lo, hi in
                                        zip(tests["difference"], tests["difference_ci_low"], tests["difference_ci_high"])],
                         "McNemar p": tests["pvalue"].map(rp.pvalue)})


def cost_view(cost: pd.DataFrame, real: bool) -> pd.DataFrame:
    """:func:`records.cost_table`: record, precision, device, batch-1 latency, best throughput, peak memory."""
    if cost.empty:
        return cost
    out = pd.DataFrame({"record": cost["run"], "precision": cost["precision"], "device": cost["device"],
                        "latency, batch 1": cost["latency_ms"].map(rp.ms),
                        "questions/s": [rp.MISSING if pd.isna(q) else f"{q:,.1f} (batch {int(b)})"
                                        for q, b in zip(cost["best_qps"], cost["best_batch_size"])],
                        "peak memory": (cost["peak_memory_mb"] * 1e6).map(rp.mb)})
    return _weights(out, real)


def breakdown_view(long: pd.DataFrame, by: str) -> pd.DataFrame:
    """A :func:`records.breakdown` as one row per group: questions and each model's accuracy with interval."""
    if long.empty:
        return long
    rows = []
    for group, part in long.groupby(by, sort=False):
        row = {by.replace("_", " "): group, "questions": rp.count(part["n"].max())}
        row.update({m: rp.interval(r["accuracy"], r["ci_low"], r["ci_high"]) for m, r in part.set_index("model").iterrows()})
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_view(ablations: pd.DataFrame) -> pd.DataFrame:
    """:func:`records.ablation_table`: setting, precision, questions, accuracy with interval, training time and
    peak memory, record."""
    if ablations.empty:
        return ablations
    return pd.DataFrame({
        "setting": ablations["setting"], "precision": ablations["precision"], "questions": ablations["n"].map(rp.count),
        "accuracy": [rp.interval(a, lo, hi) for a, lo, hi in zip(ablations["accuracy"], ablations["ci_low"],
                                                                 ablations["ci_high"])],
        "training": ablations["train_seconds"].map(lambda s: rp.MISSING if pd.isna(s) else f"{s:,.0f} s"),
        "peak memory": (ablations["train_peak_memory_gb"] * 1e9).map(rp.gb), "record": ablations["run"]})
