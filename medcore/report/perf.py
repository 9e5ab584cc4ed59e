"""The Performance report: size, speed and memory read from the committed records, as DataFrames.

- :func:`footprint` - bytes per precision of the first ``*-footprint`` record (``results/scale-h200``, else
  ``results/scale``);
- :func:`precision_rows` / :func:`precision_table` - per precision at the Gemma-2B shape (``results/scale-h200``,
  random weights): size, training speed and memory, scoring speed and batch-1 latency;
- :func:`headline_ratios` - the ratios a reader asks for, each with its conditions and record;
- :func:`gpu_check_table` - every GPU entry point with its defaults (``results/gpu-check``);
- :func:`peer_table` / :func:`targets_table` - medcore against the real peer tools in the same run, and the
  performance targets against what was measured;
- :func:`paper_epoch_reading` - the time to reproduce the paper: one epoch of a paper-sized file, then evaluation;
- :func:`scaleout_table` - one GPU against DDP (``results/scaleout``);
- :func:`lever_history` / :func:`scoring_history` - the benchmark levers of every bench record and the scoring rows
  of every product-path record (the notes page).

Random-weight records measure size, speed and memory, never accuracy; every table built from them says so.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcore.bench.report import figure
from medcore.report import book as rp
from medcore.report import tables as an
from medcore.report.position_metrics import scored_exactly
from medcore.records import headline, load_predictions, load_run, run_dirs

RANDOM = "random weights (Gemma-2B shape)"
PRECISIONS = (("bf16", "bf16"), ("int8", "int8"), ("nf4", "NF4"), ("nf4+dq", "NF4+DQ"))


def _load(path: Path) -> dict[str, Any] | None:
    return load_run(path) if (path / "metrics.json").is_file() else None


def _records(folder: Path) -> list[tuple[Path, dict]]:
    return [(p, load_run(p)) for p in run_dirs(folder)] if folder.is_dir() else []


def footprint(root: Path) -> pd.DataFrame | None:
    """Per precision (index): total, embedding and disk bytes of the first footprint record, with its path."""
    for folder in ("scale-h200", "scale"):
        for path, rec in _records(root / "results" / folder):
            if path.name.endswith("-footprint"):
                summary = an.footprint_tables(rec)[0].set_index("precision")
                return summary.assign(record=f"results/{folder}/{path.name}")
    return None


def precision_rows(scale_dir: Path) -> pd.DataFrame:
    """One row per precision of ``<prefix>-footprint``, ``-<p>-cost`` and ``-<p>-train`` (NaN where a record is
    missing): memory/disk/embedding bytes, steady training tokens/s, training peak bytes (less ``held_bytes``: memory
    an earlier run in the same process still held when training began, beyond the model and its fp32 adapter),
    best scoring q/s and its batch, batch-1 latency, device."""
    foot = next((p for p in sorted(scale_dir.glob("*-footprint"))), None) if scale_dir.is_dir() else None
    if foot is None:
        return pd.DataFrame()
    prefix, rec = foot.name.removesuffix("-footprint"), load_run(foot)
    sizes = {f["precision"]: f for f in rec["metrics"].get("footprint", [])}
    rows = []
    for precision, label in PRECISIONS:
        name = f"{prefix}-{precision.replace('+', '-')}"
        cost = ((_load(scale_dir / f"{name}-cost") or {}).get("metrics") or {}).get("cost") or {}
        train = ((_load(scale_dir / f"{name}-train") or {}).get("metrics")) or {}
        size = sizes.get(precision, {})
        held = np.nan  # allocated when training began beyond model and adapter: left over from an earlier run
        if train.get("resident_memory_bytes") and size.get("total_bytes") and train.get("parameters"):
            held = max(train["resident_memory_bytes"] - size["total_bytes"] - 4 * train["parameters"]["trainable"], 0)
        rows.append({"precision": label, "memory_bytes": size.get("total_bytes", np.nan),
                     "disk_bytes": size.get("disk_bytes", np.nan), "embedding_bytes": size.get("embedding_bytes", np.nan),
                     "train_tokens_per_s": train.get("steady_real_tokens_per_s", np.nan),
                     "train_peak_bytes": train.get("peak_memory_bytes", np.nan) - (0 if np.isnan(held) else held),
                     "held_bytes": held,
                     "train_token_budget": an.get(((_load(scale_dir / f"{name}-train") or {}).get("config") or {})
                                                  .get("train", {}), "token_budget", default=np.nan),
                     "best_qps": cost.get("best_qps", np.nan), "best_batch": cost.get("best_batch_size", np.nan),
                     "latency_ms": cost.get("latency_ms_median", np.nan),
                     "device": (cost.get("conditions") or {}).get("device_name") or train.get("device"),
                     "record": f"results/{scale_dir.name}/{name}"})
    return pd.DataFrame(rows)


def precision_table(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return rows
    return pd.DataFrame({
        "precision": rows["precision"], "in memory": rows["memory_bytes"].map(rp.gb),
        "on disk": rows["disk_bytes"].map(rp.gb), "training tokens/s": rows["train_tokens_per_s"].map(rp.count),
        "training peak": rows["train_peak_bytes"].map(rp.gb),
        "scoring questions/s": [rp.MISSING if pd.isna(q) else f"{q:,.0f} (batch {int(b)})"
                                for q, b in zip(rows["best_qps"], rows["best_batch"])],
        "batch-1 latency": rows["latency_ms"].map(rp.ms)})


def product_bench(root: Path) -> tuple[str, dict] | None:
    """The product-path benchmark record the page leads with (``results/bench-product``): the last one named
    that ``--headline`` marked, else the last one named; its name and metrics."""
    pick = headline(_records(root / "results" / "bench-product"))
    return (pick[0].name, pick[1]["metrics"]) if pick else None


def _commit(rec: dict) -> str:
    return str((rec.get("environment") or {}).get("git_commit") or rp.MISSING)[:7]


def _peer_rows(root: Path) -> list[tuple[Path, dict, dict]]:
    return [(path, rec, p) for path, rec in _records(root / "results" / "bench-product")
            for p in rec["metrics"].get("peers") or []]


def peer_table(root: Path) -> pd.DataFrame:
    """Every real-peer row of every product-path bench record (``--peers``): peer, what it ran, status, the peer's
    figure and medcore's from the same run, medcore's ratio over it, peak memory of both, record and commit.
    Training ratios are medcore's steady real tokens/s over the peer's; scoring ratios the peer's seconds over
    medcore's first pass on the same questions."""
    rows = []
    for path, rec, p in _peer_rows(root):
        med = next((t for t in rec["metrics"].get("training", []) if t.get("recipe") == "medcore"), {})
        ok = p.get("status") == "ok"
        if p["peer"] == "lm_eval":
            figure = f"{p['scoring_wall_seconds']:.1f} s" if ok else rp.MISSING
            ours = f"{p['medcore_seconds']:.1f} s" if ok else rp.MISSING
            peaks = rp.MISSING
        else:
            figure = f"{p['real_tokens_per_s']:,.0f} tokens/s" if ok else rp.MISSING
            ours = f"{p.get('medcore_real_tokens_per_s') or med.get('real_tokens_per_s', 0):,.0f} tokens/s"
            peaks = (f"{rp.gb(med.get('peak_memory_bytes'))} / {rp.gb(p.get('peak_memory_bytes'))}"
                     if ok else rp.MISSING)
        if ok:
            status = "ok"
        else:
            last = [x for x in (p.get("error") or p.get("reason") or "").splitlines() if x.strip()]
            status = f"{p.get('status')}: {last[0] if last else ''}".strip()
            if len(last) > 1:
                status += f" ... {last[-1].strip()[-80:]}"
        rows.append({"peer": p["peer"], "what ran": p.get("code_path", ""), "status": status,
                     "peer's figure": figure, "medcore, same run": ours,
                     "medcore / peer": rp.ratio(p["ratio"]) if ok and p.get("ratio") else rp.MISSING,
                     "peak memory (medcore / peer)": peaks, "record": path.name, "commit": _commit(rec)})
    return pd.DataFrame(rows, columns=["peer", "what ran", "status", "peer's figure", "medcore, same run",
                                       "medcore / peer", "peak memory (medcore / peer)", "record", "commit"])


PEER_GOALS = {"trl": 2.0, "unsloth": 1.0, "lm_eval": 3.0}  # medcore / peer, the targets against real peers


def targets_table(root: Path) -> pd.DataFrame:
    """The performance targets against what the records measured: the headline bench record's own targets, the
    last successful ratio against each real peer, and the paper epoch (training plus evaluation, minutes)."""
    rows = []
    bench = product_bench(root)
    if bench:
        name, m = bench
        for t in m.get("targets", []):
            rows.append({"target": t["target"], "goal": t["goal"], "measured": figure(t["measured"], t.get("unit", "")),
                         "met": "yes" if t["met"] else "no", "record": name})
    done = {p["peer"]: (path.name, p["ratio"]) for path, _, p in _peer_rows(root)
            if p.get("status") == "ok" and p.get("ratio")}  # a record named later replaces an earlier one
    for peer, goal in PEER_GOALS.items():
        if peer in done:
            name, ratio = done[peer]
            rows.append({"target": f"medcore / {peer}, same run", "goal": f">= {goal:g}x", "measured": rp.ratio(ratio),
                         "met": "yes" if ratio >= goal else "no", "record": name})
    minutes = _paper_epoch_minutes(root / "results" / "gpu-check")
    if minutes:
        rows.append({"target": "paper epoch + evaluation, wall time", "goal": "<= 15 min",
                     "measured": f"{minutes[0]:.1f} min", "met": "yes" if minutes[0] <= 15 else "no",
                     "record": minutes[1]})
    return pd.DataFrame(rows, columns=["target", "goal", "measured", "met", "record"])


def _paper_epoch_minutes(folder: Path) -> tuple[float, str] | None:
    """Minutes from command to record of the last record that ran the whole paper epoch and its evaluation."""
    for path, rec in reversed(_records(folder)):
        entries = {e["entry"]: e for e in rec["metrics"].get("entries", [])}
        train, done = entries.get("paper epoch: train"), entries.get("paper epoch: evaluate")
        if train and done and train["passed"] and done["passed"]:
            return (train["seconds"] + done["seconds"]) / 60, path.name
    return None


def scoring_history(root: Path) -> pd.DataFrame:
    """The scoring rows of every product-path bench record: record, commit, scorer, first and second pass seconds,
    questions/s, peak memory (both scorers run on the model ``medcore.train.train`` has just trained)."""
    rows = [{"record": path.name, "commit": _commit(rec), "scorer": r["scorer"],
             "first pass": f"{r['cold_seconds']:.2f} s", "second pass": f"{r['seconds']:.2f} s",
             "questions/s": rp.count(r["questions_per_s"]), "peak memory": rp.gb(r.get("peak_memory_bytes"))}
            for path, rec in _records(root / "results" / "bench-product") for r in rec["metrics"].get("scoring", [])]
    return pd.DataFrame(rows, columns=["record", "commit", "scorer", "first pass", "second pass", "questions/s",
                                       "peak memory"])


def _times(r: float, above: str, below: str) -> str:
    """1.12 -> "1.12x faster"; 0.8 -> "1.25x slower" (a ratio always read as at least 1)."""
    return f"{r:.2f}x {above}" if r >= 1 else f"{1 / r:.2f}x {below}"


def _row(quantity, before, after, ratio, conditions, record) -> dict[str, Any]:
    return {"quantity": quantity, "before": before, "after": after, "ratio": ratio, "conditions": conditions,
            "record": record}


def headline_ratios(root: Path) -> pd.DataFrame:
    """The headline ratios: 4-bit against bf16 (size, training memory and speed, latency, throughput at the
    Gemma-2B shape), medcore's training and scoring against the usual recipes, and DDP on two GPUs. Columns:
    quantity, before, after, ratio (after / before, or the speed-up), conditions, record."""
    rows = []
    scale = precision_rows(root / "results" / "scale-h200")
    if not scale.empty:
        by = scale.set_index("precision")
        bf, q = by.loc["bf16"], by.loc["NF4+DQ"]
        device = q["device"] or "a GPU"
        record = "results/scale-h200/" + q["record"].rsplit("/", 1)[1].replace("-nf4-dq", "-*")
        rows.append(_row("weights in memory", rp.gb(bf["memory_bytes"]), rp.gb(q["memory_bytes"]),
                         f"{bf['memory_bytes'] / q['memory_bytes']:.2f}x smaller",
                         f"bf16 \u2192 NF4+DQ; the {rp.gb(q['embedding_bytes'])} embedding stays bf16", record))
        if pd.notna(bf["train_peak_bytes"]) and pd.notna(q["train_peak_bytes"]):
            rows.append(_row("training peak memory", rp.gb(bf["train_peak_bytes"]), rp.gb(q["train_peak_bytes"]),
                             _times(q["train_peak_bytes"] / bf["train_peak_bytes"], "more", "less"),
                             f"LoRA \u2192 QLoRA, {rp.count(q['train_token_budget'])} tokens per batch, gradient "
                             f"checkpointing, {device}; less memory an earlier run still held", record))
            rows.append(_row("training speed", f"{rp.count(bf['train_tokens_per_s'])} tokens/s",
                             f"{rp.count(q['train_tokens_per_s'])} tokens/s",
                             _times(q["train_tokens_per_s"] / bf["train_tokens_per_s"], "faster", "slower"),
                             "the same runs, steady steps",
                             record))
        rows.append(_row("scoring latency, batch 1", rp.ms(bf["latency_ms"]), rp.ms(q["latency_ms"]),
                         _times(q["latency_ms"] / bf["latency_ms"], "slower", "faster"),
                         f"one question at a time, {device}", record))
        rows.append(_row("scoring throughput", f"{rp.count(bf['best_qps'])} questions/s",
                         f"{rp.count(q['best_qps'])} questions/s", _times(q["best_qps"] / bf["best_qps"], "faster", "slower"),
                         f"best batch ({int(bf['best_batch'])} / {int(q['best_batch'])})", record))
    bench = product_bench(root)
    if bench:
        name, m = bench
        train = {t["recipe"]: t for t in m.get("training", [])}
        score = {s["scorer"].split(" ")[0]: s for s in m.get("scoring", [])}
        if {"medcore", "baseline"} <= set(train):
            med, base = train["medcore"], train["baseline"]
            rows.append(_row("QLoRA training, medcore against a tutorial loop",
                             f"{rp.count(base['real_tokens_per_s'])} tokens/s", f"{rp.count(med['real_tokens_per_s'])} tokens/s",
                             f"{med['real_tokens_per_s'] / base['real_tokens_per_s']:.1f}x faster",
                             f"{med['token_budget']:,}-token batches against padded ones, {m.get('device')}",
                             f"results/bench-product/{name}"))
        if {"medcore", "harness-style"} <= set(score):
            one, harness = score["medcore"], score["harness-style"]
            rows.append(_row("scoring, one pass against four per question", f"{rp.count(harness['questions_per_s'])} questions/s",
                             f"{rp.count(one['questions_per_s'])} questions/s",
                             f"{one['questions_per_s'] / harness['questions_per_s']:.1f}x faster",
                             f"{one['questions']:,} questions, {m.get('device')}", f"results/bench-product/{name}"))
    summary = _scaleout_summary(root / "results" / "scaleout")
    if summary:
        name, m = summary
        single, ddp = m["training"].get("single"), m["training"].get("ddp")
        if single and ddp and m.get("speedup_steady_real_tokens_per_s"):
            rows.append(_row(f"DDP on {ddp['gpus']} GPUs", f"{rp.count(single['steady_real_tokens_per_s'])} tokens/s",
                             f"{rp.count(ddp['steady_real_tokens_per_s'])} tokens/s",
                             f"{m['speedup_steady_real_tokens_per_s']:.2f}x faster",
                             "one GPU against data-parallel training, steady steps", f"results/scaleout/{name}"))
    return pd.DataFrame(rows, columns=["quantity", "before", "after", "ratio", "conditions", "record"])


def _scaleout_summary(folder: Path) -> tuple[str, dict] | None:
    found = [(p.name, r["metrics"]) for p, r in _records(folder)
             if isinstance(r["metrics"], dict) and "runs" in r["metrics"] and "training" in r["metrics"]]
    return found[-1] if found else None


def scaleout_table(folder: Path) -> pd.DataFrame:
    """One GPU, DDP and the real-weight DDP fine-tune: setup, GPUs, weights, steady tokens/s, peak memory per GPU."""
    summary = _scaleout_summary(folder)
    if not summary:
        return pd.DataFrame()
    names = {"single": "one GPU", "ddp": "DDP", "fsdp": "FSDP + QLoRA", "accuracy-train": "DDP, real weights"}
    rows = [{"setup": names.get(role, role), "GPUs": t.get("gpus"),
             "weights": "real" if t.get("real_weights") else RANDOM,
             "tokens/s (steady)": rp.count(t.get("steady_real_tokens_per_s")),
             "peak memory per GPU": " / ".join(f"{v:.2f} GB" for v in t.get("peak_memory_gb_per_gpu") or []) or rp.MISSING,
             "record": f"{t.get('run')}-train"} for role, t in summary[1]["training"].items()]
    return pd.DataFrame(rows)


def scaleout_accuracy(folder: Path) -> dict[str, Any] | None:
    """The DDP fine-tune's accuracy against the one-GPU record it repeats (the summary's ``accuracy``)."""
    summary = _scaleout_summary(folder)
    return summary[1].get("accuracy") if summary else None


def gpu_check_table(folder: Path) -> pd.DataFrame:
    """Every entry of every gpu-check record: entry, result, seconds, record, commit."""
    rows = [{"entry": e["entry"], "result": "pass" if e["passed"] else e.get("status", "fail"),
             "seconds": f"{e['seconds']:.0f} s", "record": path.name, "commit": _commit(rec)}
            for path, rec in _records(folder) for e in rec["metrics"].get("entries", [])]
    return pd.DataFrame(rows, columns=["entry", "result", "seconds", "record", "commit"])


def paper_epoch_reading(folder: Path) -> str:
    """One sentence on the ``gpu-check --paper-epoch`` records in `folder`, in record order (a first call, then
    the calls that resumed it): wall seconds from command to stop summed over the calls, how far into the epoch
    the last one logged, and whether the epoch and the evaluation finished."""
    trains, evaluations = [], []
    for path, rec in _records(folder):
        for e in rec["metrics"].get("entries", []):
            if e["entry"].startswith("paper epoch: train"):
                logged = re.findall(r"'epoch': '([0-9.]+)'", " ".join(e.get("output_tail") or []))
                trains.append((path.name, e, float(logged[-1]) if logged else None))
            elif e["entry"] == "paper epoch: evaluate":
                evaluations.append(e)
    if not trains:
        return "No paper-epoch record yet (`python -m medcore gpu-check --paper-epoch`)."
    seconds = sum(e["seconds"] for _, e, _ in trains)
    names = ", ".join(f"`{name}`" for name, _, _ in trains)
    calls = f"{len(trains)} call{'s' if len(trains) > 1 else ''} ({names})"
    if trains[-1][1]["passed"]:
        done = [e for e in evaluations if e["passed"]]
        total = seconds + (done[-1]["seconds"] if done else 0)
        last = trains[-1][1]
        inside = (f" The training loop itself ran {last['wall_seconds']:,.0f} s at "
                  f"{last['steady_real_tokens_per_s']:,.0f} real tokens/s steady, peak "
                  f"{last['peak_memory_bytes'] / 1e9:.1f} GB; the rest of the training command loads the model, "
                  "encodes the training file and saves the adapter."
                  if len(trains) == 1 and last.get("wall_seconds") and last.get("steady_real_tokens_per_s") else "")
        return (f"Training one epoch took {seconds:,.0f} s of wall time over {calls}"
                + (f", and evaluating it {done[-1]['seconds']:,.0f} s: {total / 60:.1f} minutes in all." if done
                   else "; its evaluation did not finish.") + inside)
    reached = trains[-1][2]
    return (f"Not yet run to the end: {calls} took {seconds:,.0f} s of wall time from command to stop and"
            + (f" the last logged step was {reached:.1%} of the way through the epoch" if reached is not None
               else " logged no step") + "; the evaluation has not run. Each call pays its own model load and "
            "data encoding, and a resumed call repeats the steps after the last checkpoint.")


def lever_history(root: Path) -> pd.DataFrame:
    """Every lever of every benchmark record (``results/bench``, ``bench-h200-other``, ``bench-product``): record,
    lever (the variant), the base row's setting, real tokens/s or seconds, against the base row, peak memory."""
    rows = []
    for folder in ("bench", "bench-h200-other", "bench-product"):
        for path, rec in _records(root / "results" / folder):
            m = rec["metrics"]
            base = next((t for t in m.get("training", []) if t.get("recipe") == "medcore"), None)
            first = (m.get("scoring") or [{}])[0]
            c = m.get("conditions", {})
            for lv in m.get("levers", []):
                scoring = "score_batch_size" in lv or str(lv.get("lever", "")).startswith("score")
                if lv.get("error"):
                    result, against = "failed: " + str(lv["error"])[:60], rp.MISSING
                elif scoring:
                    result = f"{lv['seconds']:.2f} s for {lv['questions']:,} questions"
                    against = rp.ratio(lv["questions_per_s"] / first["questions_per_s"]) if first.get("questions_per_s") else rp.MISSING
                else:
                    result = f"{lv['real_tokens_per_s']:,.0f} tokens/s"
                    against = rp.ratio(lv["real_tokens_per_s"] / base["real_tokens_per_s"]) if base else rp.MISSING
                budget = c.get("token_budget") or (base or {}).get("token_budget")
                rows.append({"record": f"{folder}/{path.name}", "lever": lv.get("variant", lv.get("lever")),
                             "base": f"{budget:,} tokens" if isinstance(budget, int) else rp.MISSING,
                             "result": result, "against the base": against,
                             "peak memory": rp.gb(lv.get("peak_memory_bytes"))})
    return pd.DataFrame(rows, columns=["record", "lever", "base", "result", "against the base", "peak memory"])


def precision_reading(rows: pd.DataFrame) -> str:
    """What the per-precision records say about 4-bit, in numbers: memory share, batch-1 and best-batch scoring,
    training peak."""
    if rows.empty:
        return ""
    by = rows.set_index("precision")
    bf, q = by.loc["bf16"], by.loc["NF4+DQ"]
    text = (f"NF4+DQ weights take {rp.pct(q['memory_bytes'] / bf['memory_bytes'], 0)} of bf16's memory, but every "
            f"forward pass dequantizes them: one question at batch 1 takes {rp.ms(q['latency_ms'])} against "
            f"{rp.ms(bf['latency_ms'])} in bf16, and at the best batch NF4+DQ scores {rp.count(q['best_qps'])} "
            f"questions/s against {rp.count(bf['best_qps'])}.")
    if pd.notna(q["train_peak_bytes"]) and pd.notna(bf["train_peak_bytes"]):
        text += (f" With LoRA both precisions train only the adapter, so 4-bit saves the frozen weights' share of the "
                 f"training memory: a peak of {rp.gb(q['train_peak_bytes'])} against {rp.gb(bf['train_peak_bytes'])} "
                 f"at {rp.count(q['train_token_budget'])} tokens per batch.")
    return text


def _scored_with_ties(folder: Path) -> bool:
    scored = [p for p in folder.glob("*-fine-tuned") if (p / "predictions.parquet").is_file()]
    return any(not scored_exactly(load_predictions(p)) for p in scored)


def scaleout_sentence(folder: Path) -> str:
    """The DDP fine-tune's accuracy against the one-GPU record, with the McNemar test; "scored with ties" where
    the records predate exact scoring."""
    acc = scaleout_accuracy(folder)
    if not acc or acc.get("reference_accuracy") is None:
        return "No real-weight DDP accuracy in the scale-out records."
    low, high = acc["reference_ci"]
    test = acc.get("mcnemar") or {}
    text = (f"With DDP the real-weight fine-tune scored {rp.interval(acc['accuracy'], acc['ci_low'], acc['ci_high'])} "
            f"on {acc['n']:,} questions against {rp.interval(acc['reference_accuracy'], low, high)} for the one-GPU "
            f"record `{acc['reference_run']}`")
    text += f" (McNemar p = {test['pvalue']:.2g})." if test.get("pvalue") is not None else "."
    if _scored_with_ties(folder):
        text += (" Both were **scored with ties**: their bf16 letter scores often tied and every tie went to the "
                 "earliest letter, so the difference is not a clean measurement.")
    return text


def _loop_rows(root: Path) -> list[dict[str, Any]]:
    """The benchmark loop's uncompiled, warm-timed NF4 rows at the Gemma-2B shape (base rows and budget levers):
    record, token budget, real tokens/s, peak bytes."""
    rows = []
    for folder in ("bench", "bench-h200-other"):
        for path, rec in _records(root / "results" / folder):
            m, c = rec["metrics"], rec["metrics"].get("conditions", {})
            med = next((t for t in m.get("training", []) if t.get("recipe") == "medcore"), None)
            if (med is None or m.get("model") != "random:gemma-2b" or c.get("precision") != "nf4" or c.get("compile")
                    or not c.get("warm_all_shapes")):
                continue
            points = [(c.get("token_budget"), med)] + [(lv["token_budget"], lv) for lv in m.get("levers", [])
                                                        if lv.get("lever") == "budget" and not lv.get("error")]
            rows += [{"record": f"{folder}/{path.name}", "budget": b, "tokens_per_s": r["real_tokens_per_s"],
                      "peak_bytes": r.get("peak_memory_bytes")} for b, r in points]
    return rows


def product_against_loop(root: Path) -> pd.DataFrame:
    """medcore.train.train (the product path) against the benchmark's own loop at each token budget both timed:
    budget, product and loop real tokens/s, ratio, the loop's record (the last record named with that budget)."""
    bench = product_bench(root)
    if not bench:
        return pd.DataFrame()
    m = bench[1]
    med = next((t for t in m.get("training", []) if t.get("recipe") == "medcore"), None)
    points = ([(med["token_budget"], med["real_tokens_per_s"])] if med else []) + [
        (lv["token_budget"], lv["real_tokens_per_s"]) for lv in m.get("levers", []) if lv.get("lever") == "budget"
        and not lv.get("error")]
    loop = {r["budget"]: r for r in _loop_rows(root)}  # a record named later replaces an earlier one
    rows = [{"tokens per batch": f"{b:,}", "medcore.train.train": f"{rate:,.0f} tokens/s",
             "benchmark loop": f"{loop[b]['tokens_per_s']:,.0f} tokens/s", "ratio": rp.ratio(rate / loop[b]["tokens_per_s"]),
             "loop record": loop[b]["record"]} for b, rate in sorted(points) if b in loop]
    return pd.DataFrame(rows)


def lever_readings(root: Path) -> dict[str, str]:
    """Short readings of the levers in numbers, each naming its record: ``cold`` (the unchanged recipe re-timed
    against the base row), ``budgets`` (tokens/s per budget), ``profile`` (how busy the GPU was), ``ckpt``
    (checkpointing off), ``compile``, ``lora_copy`` (peft's float32 copy of LoRA inputs). Missing -> ""."""
    out = dict.fromkeys(("cold", "budgets", "profile", "ckpt", "compile", "lora_copy"), "")
    for folder in ("bench", "bench-h200-other"):
        for path, rec in _records(root / "results" / folder):
            m = rec["metrics"]
            base = next((t for t in m.get("training", []) if t.get("recipe") == "medcore"), None)
            levers = [lv for lv in m.get("levers", []) if not lv.get("error")]
            if base is None:
                continue
            vs = (lambda lv: lv["real_tokens_per_s"] / base["real_tokens_per_s"])
            repeats = [vs(lv) for lv in levers if lv.get("lever") == "repeat"]
            if repeats and max(repeats) > 1.5:
                out["cold"] = (f"the unchanged recipe re-timed ran {' and '.join(rp.ratio(r) for r in repeats)} the "
                               f"base row of `{path.name}`")
            budgets = sorted((lv["token_budget"], lv["real_tokens_per_s"]) for lv in levers if lv.get("lever") == "budget")
            if len(budgets) >= 3:
                out["budgets"] = ", ".join(f"{r:,.0f} at {b:,}" for b, r in
                                           [(m["conditions"]["token_budget"], base["real_tokens_per_s"])] + budgets)
                out["budgets"] += f" tokens per batch (`{path.name}`)"
            prof = (m.get("profile") or {}).get("train")
            if prof and "error" not in prof:
                out["profile"] = (f"the GPU ran kernels {rp.pct(prof['gpu_busy_share'], 0)} of a "
                                  f"{prof['wall_ms_per_step']:.0f}-ms step, with {prof['aten_calls_per_step']:,.0f} "
                                  f"operator calls per step (`{path.name}`)")
            for lv in levers:
                if lv.get("lever") == "ckpt" and m["conditions"].get("token_budget") == 16384:
                    out["ckpt"] = (f"{rp.ratio(vs(lv))} the base row at {rp.gb(lv['peak_memory_bytes'], 1)} instead "
                                   f"of {rp.gb(base['peak_memory_bytes'], 1)} (`{path.name}`)")
                if lv.get("lever") == "compile":
                    out["compile"] = f"{rp.ratio(vs(lv))} the base row (`{path.name}`)"
                if lv.get("lever") == "peft_cast" and m["conditions"].get("precision") == "bf16":
                    out["lora_copy"] = (f"{rp.ratio(vs(lv))} the default's speed at {rp.gb(lv['peak_memory_bytes'])} "
                                        f"instead of {rp.gb(base['peak_memory_bytes'])} (`{path.name}`, bf16)")
    return out
