"""The book's first page, computed from the records: the three-sentence verdict, the seed study's claims beside
the measured figures (:func:`seed_table`), and how long the Reproduce box's commands took (:func:`reproduce_times`).

The verdict reads the GPU study (``results/study``, via :mod:`medcore.report.study`) and the size and speed records
at the Gemma-2B shape (``results/scale-h200``, via :mod:`medcore.report.perf`). Its first sentence uses the
position-robust metrics where the records have them, and says "scored with ties" where they do not.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from medcore.report import book as rp
from medcore.report import perf
from medcore.report import tables as an
from medcore.report import run as view
from medcore.report import study as rs
from medcore.records import load_runs

SEED_CLAIMS = {  # the seed study's reported figures (its claims, not measurements of this project)
    "model size": "2009.06 MB \u2192 398.72 MB",
    "accuracy": "22.11 % \u2192 33.35 %",
    "training memory": "40 GB \u2192 10 GB",
    "inference latency": "200 ms \u2192 150 ms",
    "validation loss": "1.36",
    "question types": "basic / intermediate / advanced",
    "ablations": "over precision and PEFT method",
}
NOT_MEASURED = "not measured (no record)"


def _b(text: str) -> str:
    return f"**{text}**"


def verdict(root: Path) -> list[str]:
    """Three sentences: what QLoRA did to accuracy (position-robust metrics first), what the letter prior
    explains, what 4-bit cost and saved. One sentence saying what is missing when the study has no records."""
    study = rs.load_study(root / "results" / "study")
    if not study.ok:
        return ["No zero-shot and fine-tuned record under `results/study/` yet: the verdict is computed from them "
                "(`python -m medcore study` on a GPU writes them)."]
    base, tuned = study.models["base"], study.models["tuned"]
    b, t = study.run("base"), study.run("tuned")
    model = str(an.get(t, "config.model.source", default="?")).split(":", 1)[-1]
    robust = study.robust(base["run"]) and study.robust(tuned["run"])
    n = f"{int(tuned['n']):,}"
    if robust:
        first = (f"QLoRA took {model} from {_b(rp.pct(b['debiased_accuracy']))} to {_b(rp.pct(t['debiased_accuracy']))} "
                 f"permutation-debiased accuracy and from {rp.pct(b['circular_accuracy'])} to "
                 f"{rp.pct(t['circular_accuracy'])} circular accuracy on {n} MedMCQA validation questions "
                 f"(standard accuracy {rp.pct(base['accuracy'])} \u2192 {rp.pct(tuned['accuracy'])})")
        spread = rs.seed_table(study)
        deb = spread[spread["measure"] == "debiased accuracy"]
        first += (f"; over seeds {deb['seeds'].iloc[0]} the debiased accuracy was {deb['mean'].iloc[0]} "
                  f"\u00b1 {deb['sd'].iloc[0]}." if len(deb) else ".")
    else:
        first = (f"QLoRA took {model} from {_b(rp.pct(base['accuracy']))} to {_b(rp.pct(tuned['accuracy']))} "
                 f"accuracy on {n} MedMCQA validation questions, {rs.TIES_LABEL}: these records predate the "
                 "position-robust metrics, so how much of the gain is medicine rather than letter choice is not "
                 "measured.")
    maj = rs.majority(study)
    second = ""
    if maj is not None:
        letter = maj["letter"]
        shares = rs.letter_shares(study, ("base", "tuned"))
        side = ("above the fine-tuned model's whole interval" if tuned["ci_high"] < maj["accuracy"] else
                "below the fine-tuned model's whole interval" if tuned["ci_low"] > maj["accuracy"] else
                "inside the fine-tuned model's interval")
        second = (f"Always answering {letter}, the key's most frequent letter, scores {_b(rp.pct(maj['accuracy']))}, "
                  f"{side}")
        if len(shares):
            fav, share = rs.favourite(shares, study.label("tuned"))
            key = shares[shares["kind"] == "answer key"].set_index("letter")["share"]
            base_fav, base_share = rs.favourite(shares, study.label("base"))
            second += (f"; the fine-tuned model answers {_b(fav)} on {_b(rp.pct(share))} of the questions (the key "
                       f"has {fav} on {rp.pct(key[fav])}; zero-shot, {base_fav} on {rp.pct(base_share)})")
        ties = an.get(t, "ties")
        if not study.exact.get(tuned["run"], False) and ties is not None:
            second += f", and {rp.pct(ties / tuned['n'], 0)} of its answers were exact ties given to the earliest letter"
        second += "."
    return [first, second, _four_bit_sentence(root, study)]


def _four_bit_sentence(root: Path, study: rs.Study) -> str:
    fp = perf.footprint(root)
    rows = perf.precision_rows(root / "results" / "scale-h200")
    parts = []
    if fp is not None and {"bf16", "nf4+dq"} <= set(fp.index):
        bf, q = fp.loc["bf16"], fp.loc["nf4+dq"]
        parts.append(f"4-bit storage shrinks the Gemma-2B shape from {rp.gb(bf['total_bytes'])} to "
                     f"{_b(rp.gb(q['total_bytes']))} ({bf['total_bytes'] / q['total_bytes']:.1f}x: under the 4x "
                     f"bound, as the {rp.gb(q['embedding_bytes'])} embedding stays bf16)")
    if not rows.empty:
        by = rows.set_index("precision")
        bf, q = by.loc["bf16"], by.loc["NF4+DQ"]
        if pd.notna(bf["latency_ms"]) and pd.notna(q["latency_ms"]):
            parts.append(f"costs {rp.ms(q['latency_ms'])} instead of {rp.ms(bf['latency_ms'])} per question at "
                         f"batch 1")
    if "bf16" in study.models and "base" in study.models:
        a, b = study.models["bf16"]["accuracy"], study.models["base"]["accuracy"]
        parts.append(f"moves the studied model's zero-shot accuracy by {rp.points(b - a)}")
    if not parts:
        return "No size or speed record at the Gemma-2B shape yet (`results/scale-h200/`)."
    return (parts[0][0].upper() + parts[0][1:] if len(parts) == 1 else
            (parts[0] + ", " + ", ".join(parts[1:-1]) + (", and " if len(parts) > 2 else " and ") + parts[-1])) + "."


def headline_frame(root: Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """The headline figure's data (:func:`medcore.report.study.accuracy_long` of the zero-shot NF4, fine-tuned and k-fold
    models) and the always-the-most-frequent-letter score."""
    study = rs.load_study(root / "results" / "study")
    return rs.accuracy_long(study, ("base", "tuned", "kfold")), rs.majority(study)


def _seed_numbers(claim: str) -> list[float]:
    return [float(v) for v in re.findall(r"\d+(?:\.\d+)?", SEED_CLAIMS[claim])]


def seed_table(root: Path) -> pd.DataFrame:
    """One row per claim of the seed study: its figure, the figure measured here under stated conditions (from
    the records; :data:`NOT_MEASURED` without one), why the two differ, and the records read."""
    rows = {c: {"measured here": NOT_MEASURED, "conditions": "", "why they differ": "", "records": ""} for c in SEED_CLAIMS}
    fp = perf.footprint(root)
    if fp is not None and {"bf16", "nf4+dq"} <= set(fp.index):
        bf, q = fp.loc["bf16"], fp.loc["nf4+dq"]
        seed_bf16, seed_q = _seed_numbers("model size")[:2]
        rows["model size"] = {
            "measured here": f"{rp.mb(bf['total_bytes'])} \u2192 {rp.mb(q['total_bytes'])} "
                             f"({bf['total_bytes'] / q['total_bytes']:.2f}x)",
            "conditions": "Gemma-2B shape, weights in memory, bf16 \u2192 NF4 + double quantization",
            "why they differ": f"16-bit to 4-bit shrinks at most 4x, the seed claims {seed_bf16 / seed_q:.2f}x; the "
                               f"{rp.mb(q['embedding_bytes'])} embedding stays bf16; the seed's bf16 size is that of "
                               f"{seed_bf16 / 2 / 1e3:.2f} B parameters, Gemma-2B has {bf['total_bytes'] / 2e9:.2f} B",
            "records": q["record"]}
    study = rs.load_study(root / "results" / "study")
    if study.ok:
        base, tuned = study.models["base"], study.models["tuned"]
        maj = rs.majority(study)
        tie = "" if study.robust(tuned["run"]) else f"; {rs.TIES_LABEL}: bf16 ties went to the earliest letter"
        rows["accuracy"] = {
            "measured here": f"{rp.pct(base['accuracy'])} \u2192 {rp.pct(tuned['accuracy'])}"
                             + (f" (debiased {rp.pct(study.run('base')['debiased_accuracy'])} \u2192 "
                                f"{rp.pct(study.run('tuned')['debiased_accuracy'])})" if study.robust(tuned["run"]) else ""),
            "conditions": f"{str(tuned['model']).split(':', 1)[-1]}, {tuned['precision']}, {int(tuned['n']):,} "
                          "validation questions",
            "why they differ": "a smaller model than the seed's Gemma-2B"
                               + (f"; always {maj['letter']} scores {rp.pct(maj['accuracy'])} here" if maj else "") + tie,
            "records": f"results/study/{base['run']}, {tuned['run']}"}
        loss = rs.final_eval_loss(study)
        if loss:
            rows["validation loss"] = {
                "measured here": f"{loss['loss']:.3f}",
                "conditions": f"answer-letter loss on {rp.count(loss['questions'])} validation questions after step "
                              f"{loss['step']}",
                "why they differ": "medcore's loss covers the answer letter only; the seed does not say which tokens "
                                   "its loss covers, and its model is larger",
                "records": f"results/study/{loss['record']}"}
        tiers = rs.tier_table(study)
        named = tiers[tiers["tier (medcore)"].isin(list(rs.SEED_TYPES))]
        if len(named):
            rows["question types"] = {
                "measured here": "; ".join(f"{r['question type (seed)']} = {r['tier (medcore)']}: {r['difference']}"
                                           for _, r in named.iterrows()),
                "conditions": "fine-tuned minus zero-shot accuracy per subject tier",
                "why they differ": "the seed does not define its types; medcore groups MedMCQA's subjects by the "
                                   "phase of the curriculum that teaches them",
                "records": f"results/study/{base['run']}, {tuned['run']}"}
        abl = rs.ablation_frame(study)
        if len(abl) > 1:
            best, worst = abl.loc[abl["accuracy"].idxmax()], abl.loc[abl["accuracy"].idxmin()]
            rows["ablations"] = {
                "measured here": f"{len(abl) - 1} settings: {rp.pct(worst['accuracy'])} ({worst['setting']}) to "
                                 f"{rp.pct(best['accuracy'])} ({best['setting']})",
                "conditions": "one setting of the main recipe changed at a time, same questions",
                "why they differ": "no seed figure to set beside them; a setting differs from the main recipe only "
                                   "where its interval excludes the main run's",
                "records": "results/study/abl-*"}
    rows.update(_memory_and_latency(root))
    return pd.DataFrame([{"seed claim": c, "seed figure": SEED_CLAIMS[c], **rows[c]} for c in SEED_CLAIMS])


def _memory_and_latency(root: Path) -> dict[str, dict[str, str]]:
    out = {}
    scale = perf.precision_rows(root / "results" / "scale-h200")
    if scale.empty:
        return out
    by = scale.set_index("precision")
    bf, q = by.loc["bf16"], by.loc["NF4+DQ"]
    record = q["record"].replace("-nf4-dq", "-*")
    if pd.notna(bf["train_peak_bytes"]) and pd.notna(q["train_peak_bytes"]):
        out["training memory"] = {
            "measured here": f"{rp.gb(bf['train_peak_bytes'], 1)} \u2192 {rp.gb(q['train_peak_bytes'], 1)}",
            "conditions": f"Gemma-2B shape, bf16 LoRA \u2192 QLoRA, {rp.count(q['train_token_budget'])} tokens per "
                          f"batch, {q['device']} (less memory an earlier run still held)",
            "why they differ": "peak memory grows with the batch, which the seed does not state; with LoRA both "
                               "precisions train only the adapter, so 4-bit saves only the frozen weights' share",
            "records": record}
    if pd.notna(bf["latency_ms"]) and pd.notna(q["latency_ms"]):
        out["inference latency"] = {
            "measured here": f"{rp.ms(bf['latency_ms'])} \u2192 {rp.ms(q['latency_ms'])} at batch 1; "
                             f"{rp.count(bf['best_qps'])} \u2192 {rp.count(q['best_qps'])} questions/s at batch "
                             f"{int(q['best_batch'])}",
            "conditions": f"Gemma-2B shape, one forward pass per question, {q['device']}",
            "why they differ": "4-bit weights are dequantized on every pass: one question at a time is slower, "
                               "only large batches amortise it; the seed states neither batch nor machine",
            "records": record}
    return out


def reproduce_times(root: Path) -> dict[str, str]:
    """``demo``: how long ``make demo`` took and on how many cores; ``study``: the GPU study's training and
    scoring time on its device (sums of the records' ``wall_seconds`` and ``score_seconds``). Missing -> ""."""
    out = {"demo": "", "study": ""}
    timing = root / "results" / "demo-cpu" / "make_demo_time.txt"
    real = next((line.split()[1] for line in timing.read_text().splitlines() if line.startswith("real")), None) \
        if timing.is_file() else None
    if real:
        minutes, seconds = real.removesuffix("s").split("m")
        demo = load_runs(root / "results" / "demo-cpu")
        cores = an.get(demo.iloc[0], "env.cpu_count") if len(demo) else None
        out["demo"] = f"about {round(int(minutes) + float(seconds) / 60)} min" + (f" on {int(cores)} CPU cores" if cores else "")
    runs = load_runs(root / "results" / "study") if (root / "results" / "study").is_dir() else pd.DataFrame()
    if len(runs):
        train = runs.loc[runs["role"] == "train", "wall_seconds"].sum() if "wall_seconds" in runs else 0
        score = runs["score_seconds"].sum() if "score_seconds" in runs else 0
        device = an.get(runs.iloc[0], "env.gpu", "env.device", default="a GPU")
        out["study"] = f"about {round((train + score) / 60)} min on one {device}"
    return out


def headline_caption(accuracy: pd.DataFrame, majority: dict[str, Any] | None) -> str:
    """The headline figure's caption: what each metric counts, the two lines, and "scored with ties" where so."""
    if accuracy.empty:
        return "No scored study record yet."
    n = int(accuracy["n"].max())
    text = f"Accuracy on {n:,} MedMCQA validation questions with 95 % Wilson intervals."
    metrics = set(accuracy["metric"])
    if {"circular", "debiased"} & metrics:
        text += (" Standard accuracy counts the chosen letter; circular accuracy asks for the right answer in all four "
                 "rotations of the options; permutation-debiased accuracy averages each option's score over the four "
                 "positions, so a preference for a letter earns nothing.")
    if (accuracy["scoring"] == rs.TIES_LABEL).any():
        text += (f" Records {rs.TIES_LABEL} (before exact scoring) show standard accuracy only, and gave every exact "
                 "tie to the earliest letter.")
    text += " Dashed: chance, one letter in four."
    if majority:
        text += f" Dotted: always answering {majority['letter']}, the key's most frequent letter ({rp.pct(majority['accuracy'])})."
    return text


def run_summary(run_dir: Path | None) -> str:
    """What the executed notebooks' pipeline run is and how to read its accuracy, from its records."""
    results = (run_dir / "results") if run_dir else None
    runs = load_runs(results) if results is not None and results.is_dir() else pd.DataFrame()
    table = an.results_table(runs)
    if table.empty:
        return ("The numbered notebooks (data, quantization, fine-tuning, evaluation, analysis) are shown as a pipeline "
                "run executed them; this build's run has no scoring record yet.")
    tuned = table[(table["role"] == "fine-tuned") & table["baseline_run"].notna()]
    row = tuned.iloc[0] if len(tuned) else table.iloc[0]
    profile = str(an.get(runs.iloc[0], "config.name", default="?"))
    model = str(row["model"]).split(":", 1)[-1]
    device = an.get(runs.iloc[0], "env.device", default="?")
    text = (f"The numbered notebooks show the `{profile}` run this book was built from: `{model}` on {device}, "
            f"{int(row['n']):,} questions scored")
    if row["weights"] != "real":
        return text + f", with **{row['weights']}**: it checks the pipeline; its accuracy says nothing about medicine."
    base = table[table["run"] == row["baseline_run"]]
    if len(base):
        half = (row["ci_high"] - row["ci_low"]) / 2
        text += (f", {rp.pct(base['accuracy'].iloc[0])} zero-shot and {rp.pct(row['accuracy'])} after QLoRA "
                 f"(each \u00b1{100 * half:.1f} points). At this scale the difference is not a finding: the GPU study "
                 "above, on the whole validation split, is the one to read for accuracy.")
    return text + " Its records are under `results/` of its run folder."


def run_table(run_dir: Path | None) -> pd.DataFrame:
    """The pipeline run's scoring records: record, weights, precision, questions, accuracy with its interval and
    the change against the zero-shot record of the same precision, in points."""
    results = (run_dir / "results") if run_dir else None
    table = an.results_table(load_runs(results)) if results is not None and results.is_dir() else pd.DataFrame()
    if table.empty:
        return pd.DataFrame()
    return view.accuracy_view(table)
