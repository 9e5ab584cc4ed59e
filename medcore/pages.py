"""The book's record-driven parts, written into ``book/_generated/`` each time the book is built.

The book never executes a notebook; these functions read committed run records and write markdown tables and
PNG figures that the hand-written pages include (``{include} _generated/<name>.md``), plus the values of the
"measured" cells of ``book/performance_notes.md`` (MyST substitutions). No figure is typed into a page:

- ``results.md`` - the results table and figure of the pipeline run the book shows (intro and results page);
- ``study.md`` / ``study_glance.md`` - the GPU study (``results/study/``, real weights): before/after with
  intervals, the paired test, tiers and choice types, loss curves, the ablation, the scoring cost; then the
  ablations on a CPU (``results/ablations-cpu/``);
- ``run.md`` - the command, the notebooks and the machine of the run (reproducibility page);
- ``verdict.md`` / ``verdict_accuracy.png`` - the intro's three-sentence answer and its headline figure, from the
  study and the footprint record; ``seed_versus_measured.md`` - one row per claim of the seed study
  (:data:`SEED_CLAIMS`) beside the measured figure; ``reproduce.md`` - the recorded times of the intro's commands.

The Performance page's parts are made in :mod:`medcore.pages_bench` (the benchmark) and :mod:`medcore.pages_perf`
(model size, the GPU scale table, scale-out), which :func:`write_generated` calls:

- ``performance.md`` - the benchmark (``results/bench/``, random weights of the Gemma-2B shape), the other H200
  and CPU benchmark records (``results/bench-h200-other/``, ``results/bench-cpu/``) and the
  model-size tables (``results/scale/``), and the measured cells of the performance notes;
- ``scale_gpu.md`` - the results table per precision at the Gemma-2B shape (``results/scale-h200/``, random
  weights): size, training and scoring speed and memory;
- ``scaleout.md`` - one GPU against DDP (random weights) and the real-weight DDP fine-tune against the one-GPU
  record (``results/scaleout/``), FSDP from ``results/scaleout-fsdp/`` when it exists.

The helpers every generator uses live in :mod:`medcore.page_parts`; this module imports ``pages_bench``,
``pages_perf`` and ``pages_product`` and none of them imports it back.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcore import analysis as an
from medcore.page_parts import format_numbers as _fmt, note as _note, save_figure as _save
from medcore.results import load_loss_history, load_run, load_runs, run_dirs




# ---- the pipeline run ---------------------------------------------------------------------------------------

def results_markdown(results_dir: Path, out: Path) -> str:
    """The results table of a pipeline run's records, its paired tests and an overview figure."""
    from medcore import plots

    runs = load_runs(results_dir)
    table = an.results_table(runs)
    if table.empty:
        return (f"*No scoring record in `{results_dir.parent.name}/{results_dir.name}/`: the pipeline did not reach "
                "notebook 04.*\n")
    text = an.markdown_table(an.format_results_table(table))
    if (table["weights"] != "real").any():
        text += (f"\n*Rows marked \u201c{an.RANDOM_LABEL}\u201d come from random-weight models: they test the "
                 "pipeline; their accuracy says nothing about medicine.*\n")
    tests = an.paired_tests(table, results_dir)
    if len(tests):
        text += "\nPaired on the same questions (exact McNemar test):\n\n" + an.markdown_table(an.format_paired_tests(tests))
    fig = plots.results_overview(table, title="Size, accuracy (95% interval) and latency per scored model")
    return text + _save(fig, out, "accuracy.png", "Size, accuracy with its 95% interval and latency of every run")


# ---- the GPU study ------------------------------------------------------------------------------------------------

ROLE_ORDER = {"zero-shot": 0, "fine-tuned": 1, "fine-tuned-kfold": 2}


def _short(row: pd.Series) -> str:
    """"zero-shot bf16", "QLoRA nf4+dq", "5-fold QLoRA nf4+dq": the record's role and precision."""
    precision = an.get(row, "precision", default="?")
    method = "LoRA" if precision == "bf16" else "QLoRA"
    if row["role"] == "zero-shot":
        return f"zero-shot {precision}"
    if row["role"] == "fine-tuned-kfold":
        return f"{int(an.get(row, 'k', default=0))}-fold {method} {precision}"
    return f"{method} {precision}"


def _setting(row: pd.Series, runs: pd.DataFrame) -> str:
    """What the row's model is, all read from its records: LoRA settings and what it was trained on."""
    if row["role"] == "zero-shot":
        return "the base model, no adapter"
    lora = f"LoRA r={an.get(row, 'config.lora.r')} on {an.get(row, 'config.lora.targets')} layers"
    if row["role"] == "fine-tuned-kfold":
        k = int(an.get(row, "k", default=0))
        return f"{lora}; each question scored by the model trained on the other {k - 1} of {k} folds"
    train = runs.set_index("run_id").get("n_train", pd.Series(dtype=float)).get(f"{row['config.name']}-train")
    epochs = an.get(row, "config.train.epochs")
    return f"{lora}; {epochs:g} epochs on {int(train)} training questions" if train else lora


def study_markdown(study_dir: Path, out: Path) -> tuple[str, str]:
    """(the study section of the results page, the at-a-glance table of the intro) from ``results/study``."""
    from medcore import plots
    from medcore.study import ABLATIONS

    runs = load_runs(study_dir)
    table = an.results_table(runs)
    if table.empty:
        missing = _note(f"No study record under `results/{study_dir.name}/`: run `python -m medcore study` on a GPU "
                        "and commit its records; this section then shows them.")
        return missing, missing
    runs_by_id = runs.set_index("run_id", drop=False)
    ablation_names = {f"{name}-fine-tuned" for name in ABLATIONS}
    main = table[~table["run"].isin(ablation_names)].copy()
    main = main.assign(order=main["role"].map(ROLE_ORDER), bf16=main["precision"] != "bf16")
    main = main.sort_values(["order", "bf16", "run"]).drop(columns=["order", "bf16"]).reset_index(drop=True)
    main["model"] = [_short(runs_by_id.loc[r]) for r in main["run"]]
    main["setting"] = [_setting(runs_by_id.loc[r], runs) for r in main["run"]]
    env = runs_by_id.loc[main["run"].iloc[0]]
    facts = (f"Records under `results/{study_dir.name}/`, written by `python -m medcore study` on "
             f"{an.get(env, 'env.device', default='?')} (git commit `{str(an.get(env, 'env.git_commit'))[:10]}`), "
             f"model `{an.get(env, 'config.model.source')}` with **{an.weights_label(env)}** weights.\n")
    if str(an.get(env, "config.model.source", default="")).startswith("embedded:"):
        facts += ("Its bf16 weights are dequantized from the 4-bit GGUF file it is distributed as, so the bf16 row "
                  "is not Google's bf16 checkpoint.\n")
    shown = an.format_results_table(main)[["accuracy [95% CI]", "improvement", "questions"]]
    shown.insert(0, "model", main["model"].to_numpy())
    shown["setting"], shown["record"] = main["setting"].to_numpy(), main["run"].to_numpy()
    glance = an.markdown_table(shown)
    tests = an.paired_tests(table, study_dir)
    parts = ["### Before and after\n", facts, glance,
             "\nImprovement: relative to the zero-shot record of the same precision on the same questions.\n"]
    fig = plots.ablation_plot(main.assign(setting=main["model"], ablation=main["role"]),
                              title="Accuracy on the same questions (95% Wilson interval)")
    parts.append(_save(fig, out, "study_accuracy.png", "Accuracy with 95% intervals, zero-shot and fine-tuned"))
    parts += ["\n### Paired test\n", "Zero-shot and fine-tuned answers matched by question id: `b` questions only "
              "the zero-shot model got right, `c` only the fine-tuned one; the exact McNemar test asks whether they "
              "differ by more than chance, and the interval of the difference is a paired bootstrap.\n\n",
              an.markdown_table(an.format_paired_tests(tests))]

    parts += ["\n### The answer-letter prior\n", _letter_prior(runs, main)]

    labels = dict(zip(main["run"], main["model"]))
    parts.append("\n### By tier and by choice type\n")
    for by in ("tier", "choice_type"):
        long = an.breakdown(runs, by, {r: l for r, l in labels.items() if "bf16" not in l})
        if long.empty:
            continue
        fig = plots.accuracy_by_group(long, group=by, title=f"Accuracy by {by.replace('_', ' ')}, before and after")
        parts.append(_save(fig, out, f"study_{by}.png", f"Accuracy by {by} before and after fine-tuning"))
        pivot = long.pivot_table(index=by, columns="model", values="accuracy", sort=False).map(lambda v: f"{v:.1%}")
        counts = long.groupby(by)["n"].max().astype(int).rename("questions")
        parts.append("\n" + an.markdown_table(pivot.join(counts).reset_index()))

    parts.append("\n### Training\n")
    trains = an.train_table(runs)
    main_train = [f"{n}-train" for n in runs_by_id.loc[main["run"], "config.name"] if f"{n}-train" in set(trains["run"])]
    trains = trains[~trains["run"].str.contains("-fold")]
    parts.append(an.markdown_table(_fmt(trains)))
    if main_train:
        fig = plots.loss_curves(an.loss_long(study_dir, main_train[0]), title=f"Answer-letter loss: {main_train[0]}")
        parts.append(_save(fig, out, "study_loss.png", "Training and evaluation loss of the main QLoRA run"))

    parts.append("\n### Ablation\n")
    ablations = an.ablation_table(runs)
    if len(ablations):
        named = ablations.assign(setting=[f"{'LoRA' if p == 'bf16' else 'QLoRA'} {p}" for p in ablations["precision"]])
        fig = plots.ablation_plot(named, title="Fine-tuned accuracy per setting (95% interval)")
        shown = pd.DataFrame({"record": ablations["run"], "setting": ablations["setting"],
                              "precision": ablations["precision"], "questions": ablations["n"].astype(int),
                              "accuracy [95% CI]": [f"{a:.1%} [{lo:.1%}, {hi:.1%}]" for a, lo, hi in zip(
                                  ablations["accuracy"], ablations["ci_low"], ablations["ci_high"])],
                              "training seconds": ablations["train_seconds"], "examples/s": ablations["examples_per_s"],
                              "training peak memory (GB)": ablations["train_peak_memory_gb"],
                              "held when training began (GB)": ablations["train_resident_memory_gb"],
                              "machine": ["shared (see note)" if isinstance(n, str) and n else "own GPU"
                                          for n in ablations["run_note"]]})
        parts.append(an.markdown_table(_fmt(shown)))
        for note, group in ablations.dropna(subset=["run_note"]).groupby("run_note"):
            runs_noted = ", ".join(f"`{r}`" for r in group["run"])
            parts.append("\n" + _note(f"{runs_noted}: {note}. Compare their training seconds and examples/s "
                                       "with each other, not with the runs that had a GPU of their own."))
        if ablations["train_resident_memory_gb"].notna().any():
            parts.append("\n" + _note(
                "'held when training began' is the GPU memory allocated at the first training step: the 4-bit model "
                "and adapter, plus, for a run that followed another training run in the same process, that run's "
                "embedding. bitsandbytes' GlobalOptimManager kept it: the Trainer registers every embedding there "
                "for 8-bit optimizers. medcore now releases it when training ends "
                "(`train.release_optimizer_overrides`). Peak memory includes it."))
        parts.append(_save(fig, out, "study_ablation.png", "Accuracy of each fine-tuned setting with its interval"))
    not_run = [f"`{name}` ({', '.join(f'{k}={v}' for k, v in over.items())})" for name, over in ABLATIONS.items()
               if f"{name}-fine-tuned" not in set(runs["run_id"])]
    if not_run:
        parts.append("\n" + _note("Not run on the GPU, for lack of device time: " + "; ".join(not_run) +
                                  ". `python -m medcore study --parts ablations` runs them; the book then shows them."))

    cost = an.cost_table(runs[runs["role"] == "zero-shot"])
    if len(cost):
        parts.append("\n### Scoring cost\n")
        parts.append(an.markdown_table(_fmt(cost.drop(columns=["run"]).rename(columns={
            "latency_ms": "latency, batch 1 (ms, median)", "latency_ms_p90": "latency p90 (ms)",
            "qps_batch_1": "questions/s, batch 1", "best_qps": "questions/s, best batch",
            "best_batch_size": "best batch", "peak_memory_mb": "peak memory (MB)", "peak_memory_kind": "measured as"}))))
        fig = plots.compare_bars(cost, by="precision", metrics={"latency_ms": "latency per question, batch 1 (ms)",
                                 "best_qps": "questions/s (best batch)", "peak_memory_mb": "peak memory (MB)"},
                                 title=f"Scoring cost of the zero-shot models on {cost['device'].iloc[0]}")
        parts.append(_save(fig, out, "study_cost.png", "Latency, throughput and peak memory per precision"))
    return "\n".join(parts), facts + "\n" + glance


def _letter_prior(runs: pd.DataFrame, main: pd.DataFrame) -> str:
    """Predicted-letter shares of each scoring record beside the key's, and the always-the-commonest-letter score.

    A fine-tuned model can gain accuracy by learning which letter the key favours rather than medicine; this
    table lets the reader see whether the gain exceeds what that prior alone gives.
    """
    shares = runs.set_index("run_id")["letters"] if "letters" in runs else pd.Series(dtype=object)
    rows, key = [], None
    for run, model in zip(main["run"], main["model"]):
        value = shares.get(run)  # the records' metrics, already loaded (load_runs)
        letters = pd.DataFrame(value if isinstance(value, list) else [])
        if letters.empty:
            continue
        key = letters
        rows.append({"model": model, **{f"{l} predicted": f"{v:.1%}" for l, v in
                                        zip(letters["letter"], letters["predicted_share"])}, "record": run})
    if key is None:
        return ""
    rows.append({"model": "answer key", **{f"{l} predicted": f"{v:.1%}" for l, v in
                                           zip(key["letter"], key["answer_share"])}, "record": ""})
    best = key.loc[key["answer_share"].idxmax()]
    text = (f"\nA model that always answered **{best['letter']}**, the key's commonest letter, would score "
            f"**{best['answer_share']:.1%}** on these {int(key['answer'].sum())} questions. Accuracy that does "
            "not clear that line cannot be credited to medical knowledge.\n")
    return an.markdown_table(pd.DataFrame(rows)) + text


# ---- the run (reproducibility page) ---------------------------------------------------------------------------

def run_markdown(run_dir: Path, status: dict[str, Any]) -> str:
    """The command that reproduces the run, the notebooks' state and time, and the machine."""
    if not status:
        return f"*`{run_dir.name}` has no pipeline status file.*\n"
    sets = " ".join(f"--set {o}" for o in status.get("overrides", []))
    lines = ["```bash", f"python -m medcore run --profile {status.get('profile')} {sets}".rstrip(), "```", ""]
    seconds = status.get("seconds", {})
    nbs = status.get("notebooks", [])
    lines.append(an.markdown_table(pd.DataFrame({
        "notebook": nbs, "finished": ["yes" if n in status.get("finished", []) else "no" for n in nbs],
        "seconds": [f"{seconds[n]:.0f}" if n in seconds else "" for n in nbs]})))
    if status.get("failed"):
        f = status["failed"]
        lines.append(f"\nThe run stopped at `{f.get('notebook')}`: `{f.get('ename')}: {f.get('evalue')}`.\n")
    records = run_dirs(run_dir / "results")
    if records:
        env = load_run(records[-1]).get("environment") or {}
        facts = {"device": env.get("device"), "platform": env.get("platform"), "python": env.get("python"),
                 "CPU cores": env.get("cpu_count"), "torch threads": env.get("torch_threads"),
                 "git commit": env.get("git_commit"), "uncommitted changes": env.get("git_dirty"),
                 **(env.get("packages") or {})}
        lines += [f"\nEnvironment (from the record `{records[-1].name}`):\n",
                  an.markdown_table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}))]
    return "\n".join(lines)


def cpu_ablation_markdown(abl_dir: Path, zero_shot_dir: Path, out: Path) -> str:
    """The ablations run on a CPU with real weights at demo scale (``results/ablations-cpu``), with intervals.

    The zero-shot NF4+DQ record of the demo run is shown beside them when it scored exactly the same questions.
    """
    from medcore import plots
    from medcore.results import load_predictions

    runs = load_runs(abl_dir) if abl_dir.is_dir() else pd.DataFrame()
    ablations = an.ablation_table(runs)
    if not len(ablations):
        return ""
    labels = [("baseline: QLoRA nf4+dq, r=16, all-linear" if not r.startswith("abl-") else r.removesuffix("-fine-tuned"))
              for r in ablations["run"]]
    table = ablations.assign(setting=labels, ablation="fine-tuned")
    zs = zero_shot_dir / "demo-zero-shot"
    if (zs / "predictions.parquet").is_file():
        zero = load_predictions(zs)
        ids = set(load_predictions(abl_dir / ablations["run"].iloc[0])["id"])
        if set(zero["id"]) == ids:
            k, n = int(zero["correct"].sum()), len(zero)
            from medcore.stats import wilson_interval

            lo, hi = wilson_interval(k, n)
            table = pd.concat([table, pd.DataFrame([{"run": f"{zero_shot_dir.name}/demo-zero-shot",
                               "setting": "zero-shot nf4+dq (no adapter)", "ablation": "zero-shot", "accuracy": k / n,
                               "ci_low": lo, "ci_high": hi, "n": n, "precision": "nf4+dq"}])], ignore_index=True)
    env = runs.iloc[0]
    shown = pd.DataFrame({"setting": table["setting"], "record": table["run"], "questions": table["n"].astype(int),
                          "accuracy [95% CI]": [f"{a:.1%} [{lo:.1%}, {hi:.1%}]" for a, lo, hi in zip(
                              table["accuracy"], table["ci_low"], table["ci_high"])],
                          "training seconds": table["train_seconds"], "examples/s": table["examples_per_s"],
                          "training peak RSS (GB)": table["train_peak_memory_gb"]})
    fig = plots.ablation_plot(table, title="CPU ablations, demo scale (95% Wilson interval)")
    return "\n".join([
        "\n### Ablations on a CPU (real weights, demo scale)\n",
        f"Records under `results/{abl_dir.name}/`, written by `python -m medcore study --profile demo --set name=cpu "
        f"--set results_dir=results/{abl_dir.name} --parts main,ablations` on {an.get(env, 'env.device', default='a CPU')} "
        f"(git commit `{str(an.get(env, 'env.git_commit'))[:10]}`): the embedded model trained on a stratified part "
        "of the validation split and scored on the disjoint rest, one setting changed at a time. The training "
        "set is small, so these intervals are wide; the GPU study above is the larger test.\n",
        an.markdown_table(_fmt(shown).replace({"nan": "—"}).fillna("—")),
        _save(fig, out, "cpu_ablation.png", "CPU ablations with intervals")])


# ---- the intro's first screen: verdict, seed versus measured, reproduce ---------------------------------------------

SEED_CLAIMS = {  # the seed study's reported figures (its claims, not measurements of this project)
    "model size": "2009.06 MB \u2192 398.72 MB",
    "accuracy": "22.11 % \u2192 33.35 %",
    "training memory": "40 GB \u2192 10 GB",
    "inference latency": "200 ms \u2192 150 ms",
    "validation loss": "1.36",
    "question types": "basic / intermediate / advanced",
}
# medcore's subject tiers (medcore.data.SUBJECT_TIERS) in the order of the seed's question types
SEED_TYPES = {"pre-clinical": "basic", "para-clinical": "intermediate", "clinical": "advanced"}


def headline_records(study_dir: Path) -> dict[str, Any]:
    """The study's main records: the results table rows of the zero-shot bf16 and NF4 models, the NF4 fine-tuned
    and k-fold ones (ablations left out), the runs frame, and the key's most-frequent-letter baseline on the
    fine-tuned record's questions. Empty without a fine-tuned record."""
    from medcore.results import load_predictions
    from medcore.study import ABLATIONS

    runs = load_runs(study_dir)
    table = an.results_table(runs)
    table = table[~table["run"].isin({f"{name}-fine-tuned" for name in ABLATIONS})]
    tuned = table[(table["role"] == "fine-tuned") & (table["precision"] != "bf16")]
    if tuned.empty:
        return {}
    tuned = tuned.iloc[0]
    pick = (lambda mask: table[mask].iloc[0] if mask.any() else None)
    preds = load_predictions(study_dir / tuned["run"])
    return {"runs": runs, "tuned": tuned, "base": pick(table["run"] == tuned["baseline_run"]),
            "bf16": pick((table["role"] == "zero-shot") & (table["precision"] == "bf16")),
            "kfold": pick(table["role"] == "fine-tuned-kfold"),
            "majority": an.majority_letter(preds["answer"]), "key_a": float((preds["answer"] == 0).mean()),
            "exact": an.scored_exactly(preds)}


def _ci(row: Any) -> str:
    return f"**{row['accuracy']:.1%}** [{row['ci_low']:.1%}, {row['ci_high']:.1%}]"


def _footprint(root: Path) -> pd.DataFrame | None:
    """The per-precision footprint summary of the first ``*-footprint`` record in results/scale-h200, results/scale."""
    for folder in ("scale-h200", "scale"):
        for record in run_dirs(root / "results" / folder):
            if record.name.endswith("-footprint"):
                summary = an.footprint_tables(load_run(record))[0].set_index("precision")
                return summary.assign(record=record.name, folder=folder)
    return None


def verdict_markdown(root: Path, out: Path) -> str:
    """Three sentences computed from ``results/study`` and the footprint record, and the headline figure."""
    from medcore import plots

    h = headline_records(root / "results" / "study")
    if not h:
        return _note("No fine-tuned study record under `results/study/`: the verdict is computed from it.")
    record = h["runs"].set_index("run_id")
    base, tuned, kfold, maj = h["base"], h["tuned"], h["kfold"], h["majority"]
    k = int(an.get(record.loc[kfold["run"]], "k", default=0)) if kfold is not None else 0
    tuned_models = [("fine-tuned", tuned)] + ([(f"{k}-fold", kfold)] if kfold is not None else [])

    def versus(name: str, row: pd.Series) -> str:
        side = ("lies below it" if row["ci_high"] < maj["accuracy"] else "lies above it"
                if row["ci_low"] > maj["accuracy"] else "contains it")
        return f"the {name} interval {side}"

    first = (f"QLoRA ({tuned['precision']}) took `{tuned['model']}` from {_ci(base)} zero-shot to {_ci(tuned)} on "
             f"{int(tuned['n']):,} MedMCQA validation questions"
             + (f" ({_ci(kfold)} in {k} folds)" if kfold is not None else "")
             + f", but always answering **{maj['letter']}**, the key's most frequent letter, scores "
             f"**{maj['accuracy']:.1%}**: " + ", ".join(versus(n, r) for n, r in tuned_models) + ".")
    scored = [("zero-shot", base), *tuned_models]
    ties = [an.get(record.loc[r["run"]], "ties", default=np.nan) / r["n"] for _, r in scored]
    shares = []
    for _, row in scored:
        letters = pd.DataFrame(an.get(record.loc[row["run"]], "letters", default=[]))
        if len(letters):
            shares.append(float(letters.set_index("letter")["predicted_share"].get("A", np.nan)))
    second = ("The records predate exact scoring: bf16 ties (" f"{min(ties):.0%} to {max(ties):.0%} of answers, "
              "`ties` in each record) all went to the earliest tied letter, which flatters their accuracy"
              if not h["exact"] else "The records were scored exactly, each tie split between its letters")
    second += (f", and the models answer A {min(shares):.0%} to {max(shares):.0%} of the time against "
               f"{h['key_a']:.0%} in the key." if shares else ".")
    fp = _footprint(root)
    third = ""
    if fp is not None and {"bf16", "nf4+dq"} <= set(fp.index):
        bf, q = fp.loc["bf16"], fp.loc["nf4+dq"]
        third = (f" NF4 with double quantization stores the Gemma-2B shape in **{q['total_bytes'] / 1e9:.2f} GB** "
                 f"instead of **{bf['total_bytes'] / 1e9:.2f} GB** ({bf['total_bytes'] / q['total_bytes']:.2f}x, "
                 f"under the 4x bound because the {q['embedding_bytes'] / 1e9:.2f} GB embedding stays bf16; "
                 f"`{q['record']}`).")
    rows = [r for r in (h["bf16"], base, tuned, kfold) if r is not None]
    frame = pd.DataFrame({"model": [_short(record.loc[r["run"]]) for r in rows],
                          "role": ["zero-shot" if r["role"] == "zero-shot" else "fine-tuned" for r in rows],
                          **{c: [r[c] for r in rows] for c in ("accuracy", "ci_low", "ci_high")}})
    fig = plots.ablation_plot(frame, setting="model", hue="role", prior=(maj["letter"], maj["accuracy"]),
                              title=f"MedMCQA validation accuracy, {int(tuned['n']):,} questions (95% interval)")
    return (f"{first} {second}{third}\n" +
            _save(fig, out, "verdict_accuracy.png", "Accuracy with 95% intervals, zero-shot and fine-tuned, beside "
                  "the chance line and the always-the-most-frequent-letter line"))


def _record(root: Path, folder: str, suffix: str) -> dict[str, Any] | None:
    """The metrics and config of the first record in ``results/<folder>`` whose name ends in ``suffix``."""
    for path in run_dirs(root / "results" / folder):
        if path.name.endswith(suffix):
            return {**load_run(path), "name": path.name, "path": path}
    return None


def seed_table(root: Path) -> pd.DataFrame:
    """One row per claim of the seed study (:data:`SEED_CLAIMS`): its figure, the figure measured here (from the
    committed records, "not measured" where a record is missing), the conditions, and why the two differ."""
    missing = "not measured (no record)"
    rows = {claim: {"measured here": missing, "conditions": "", "why they differ": "", "records": ""}
            for claim in SEED_CLAIMS}
    fp = _footprint(root)
    if fp is not None and {"bf16", "nf4+dq"} <= set(fp.index):
        bf, q = fp.loc["bf16"], fp.loc["nf4+dq"]
        rows["model size"] = {
            "measured here": f"{bf['total_bytes'] / 1e6:,.0f} MB \u2192 {q['total_bytes'] / 1e6:,.0f} MB "
                             f"({bf['total_bytes'] / q['total_bytes']:.2f}x)",
            "conditions": "Gemma-2B shape, weights in memory, bf16 \u2192 NF4 + double quantization",
            "records": f"results/{q['folder']}/{q['record']}",
            "why they differ": f"16-bit to 4-bit shrinks at most 4x, the seed claims "
                               f"{_seed_ratio('model size'):.2f}x; bitsandbytes keeps the "
                               f"{q['embedding_bytes'] / 1e6:,.0f} MB embedding in bf16; the seed's bf16 size is that "
                               f"of {_seed_values('model size')[0] / 2 / 1e3:.2f} B parameters, Gemma-2B has "
                               f"{bf['total_bytes'] / 2 / 1e9:.2f} B parameters"}
    h = headline_records(root / "results" / "study")
    if h and h["base"] is not None:
        base, tuned, kfold, maj = h["base"], h["tuned"], h["kfold"], h["majority"]
        train = _record(root, "study", f"{tuned['run'].removesuffix('-fine-tuned')}-train") or {}
        n_train = an.get(train.get("metrics") or {}, "n_train")
        rows["accuracy"] = {
            "measured here": f"{base['accuracy']:.1%} \u2192 {tuned['accuracy']:.1%}" +
                             (f" ({kfold['accuracy']:.1%} k-fold)" if kfold is not None else ""),
            "conditions": f"{tuned['model'].removeprefix('embedded:')}, {tuned['precision']}, "
                          f"{int(tuned['n']):,} validation questions" + (f", trained on {int(n_train):,}" if n_train else ""),
            "records": f"results/study/{base['run']}, {tuned['run']}" + (f", {kfold['run']}" if kfold is not None else ""),
            "why they differ": f"a smaller model than the seed's Gemma-2B; always {maj['letter']} scores "
                               f"{maj['accuracy']:.1%} here" + ("; bf16 ties went to the earliest letter"
                                                                 if not h["exact"] else "")}
        history = load_loss_history(train["path"]) if train else pd.DataFrame()
        if "eval_loss" in history:
            last = history.dropna(subset=["eval_loss"]).iloc[-1]
            rows["validation loss"] = {
                "measured here": f"{last['eval_loss']:.3f}",
                "conditions": f"answer-letter loss on {int(an.get(train['metrics'], 'n_eval', default=0)):,} "
                              f"validation questions after step {int(last['step'])}",
                "records": f"results/study/{train['name']}",
                "why they differ": "medcore's loss covers the answer letter only and the seed does not say which "
                                   f"tokens its loss covers; its model is Gemma-2B, this one {tuned['model'].removeprefix('embedded:')}"}
        record = h["runs"].set_index("run_id")
        tiers = {r: {t["tier"]: t["accuracy"] for t in (an.get(record.loc[r], "by_tier", default=[]) or [])}
                 for r in (base["run"], tuned["run"])}
        shown = [f"{SEED_TYPES[t]} = {t}: {tiers[base['run']][t]:.1%} \u2192 {tiers[tuned['run']][t]:.1%}"
                 for t in SEED_TYPES if all(t in v for v in tiers.values())]
        if shown:
            rows["question types"] = {
                "measured here": "; ".join(shown), "conditions": "zero-shot \u2192 fine-tuned, medcore's subject tiers",
                "records": f"results/study/{base['run']}, {tuned['run']}",
                "why they differ": "the seed does not define its types; medcore groups MedMCQA's subjects by the "
                                   "phase of the curriculum that teaches them"}
    bench = _record(root, "bench-product", "")
    bf16_train = _record(root, "scale-h200", "-bf16-train")
    if bench:
        runs = [t for t in bench["metrics"].get("training", []) if t.get("recipe") == "medcore"]
        runs += [lv for lv in bench["metrics"].get("levers", []) if lv.get("recipe") == "medcore" and not lv.get("error")]
        peaks = dict(sorted((int(r["token_budget"]), r["peak_memory_bytes"] / 1e9) for r in runs
                            if r.get("peak_memory_bytes")))
        if peaks:
            cell = "QLoRA peak " + ", ".join(f"{gb:.1f} GB at {tb:,}" for tb, gb in peaks.items()) + " tokens per batch"
            why = ""
            tb = int(an.get(bf16_train["config"]["train"], "token_budget", default=0)) if bf16_train else 0
            if tb in peaks:
                bf16_gb = bf16_train["metrics"]["peak_memory_bytes"] / 1e9
                cell = f"{bf16_gb:.1f} GB \u2192 {peaks[tb]:.1f} GB at {tb:,} tokens per batch" + "".join(
                    f"; QLoRA {gb:.1f} GB at {other:,}" for other, gb in peaks.items() if other != tb)
                why = f"; at the same batch QLoRA needs {bf16_gb / peaks[tb]:.1f}x less, as activations do not shrink"
            rows["training memory"] = {
                "measured here": cell,
                "conditions": f"Gemma-2B shape, bf16 LoRA \u2192 QLoRA (NF4 + double quantization), r=16 all "
                              f"linear, gradient checkpointing, {bench['metrics'].get('device', '?')}",
                "records": f"results/bench-product/{bench['name']}"
                           + (f", results/scale-h200/{bf16_train['name']}" if tb in peaks else ""),
                "why they differ": "peak memory grows with the batch, which the seed does not state; with LoRA "
                                   "both precisions train only the adapter, so 4-bit saves the frozen weights' share"
                                   + why}
    costs = {p: _record(root, "scale-h200", f"-{p}-cost") for p in ("bf16", "nf4-dq")}
    if all(costs.values()):
        c = {p: r["metrics"]["cost"] for p, r in costs.items()}
        rows["inference latency"] = {
            "measured here": f"{c['bf16']['latency_ms_median']:.1f} ms \u2192 {c['nf4-dq']['latency_ms_median']:.1f} ms"
                             f" (batch 1); {c['bf16']['best_qps']:,.0f} \u2192 {c['nf4-dq']['best_qps']:,.0f} "
                             f"questions/s at batch {c['nf4-dq']['best_batch_size']}",
            "conditions": f"Gemma-2B shape, bf16 \u2192 NF4 + double quantization, one forward pass per question, "
                          f"{c['bf16'].get('conditions', {}).get('device_name', '?')}",
            "records": ", ".join(f"results/scale-h200/{r['name']}" for r in costs.values()),
            "why they differ": "4-bit weights are dequantized on every pass, so one question at a time is slower; "
                               "only large batches amortise that; the seed states neither batch nor machine"}
    return pd.DataFrame([{"seed claim": claim, "seed figure": SEED_CLAIMS[claim], **rows[claim]}
                         for claim in SEED_CLAIMS])


def _seed_values(claim: str) -> list[float]:
    import re

    return [float(v) for v in re.findall(r"\d+(?:\.\d+)?", SEED_CLAIMS[claim])]


def _seed_ratio(claim: str) -> float:
    before, after = _seed_values(claim)[:2]
    return before / after


def seed_markdown(root: Path) -> str:
    """The table without its records column (record names do not wrap), then the records it read, per claim."""
    table = seed_table(root)
    read = "; ".join(f"{claim}: `{records}`" for claim, records in zip(table["seed claim"], table["records"]) if records)
    return an.markdown_table(table.drop(columns="records")) + (f"\nRecords read \u2014 {read}.\n" if read else "")


def reproduce_markdown(root: Path) -> str:
    """How long the commands of the Reproduce box took, read from their records."""
    lines = []
    timing = root / "results" / "demo-cpu" / "make_demo_time.txt"
    real = next((line.split()[1] for line in timing.read_text().splitlines() if line.startswith("real")), None) \
        if timing.is_file() else None
    demo = load_runs(root / "results" / "demo-cpu")
    cores = an.get(demo.iloc[0], "env.cpu_count") if len(demo) else None
    if real:
        minutes, seconds = real.removesuffix("s").split("m")
        lines.append(f"`make demo` took {int(minutes)} min {float(seconds):.0f} s of wall time"
                     + (f" on {int(cores)} CPU cores" if cores else "") +
                     " with the venv already built (`results/demo-cpu/make_demo_time.txt`).")
    runs = load_runs(root / "results" / "study")
    if len(runs):
        train = runs.loc[runs.get("role") == "train", "wall_seconds"].sum() if "wall_seconds" in runs else 0
        score = runs["score_seconds"].sum() if "score_seconds" in runs else 0
        device = an.get(runs.iloc[0], "env.device", default="a GPU")
        lines.append(f"The study's records (main, k-fold, ablations) on {device} add up to {train / 60:.0f} min of training and "
                     f"{score / 60:.0f} min of scoring (`wall_seconds`, `score_seconds`; loading models not counted).")
    return " ".join(lines) + "\n" if lines else "*No timing record yet.*\n"


def write_generated(book_dir: Path, run_dir: Path, status: dict[str, Any], root: Path) -> dict[str, str]:
    """Write every generated part into ``book_dir/_generated`` (emptied first); return the substitutions."""
    import matplotlib

    from medcore.pages_bench import bench_records, bench_markdown, bench_summary_markdown, notes_substitutions
    from medcore.pages_perf import scale_gpu_markdown, scale_markdown, scaleout_markdown

    matplotlib.use("Agg")
    out = book_dir / "_generated"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "results.md").write_text(results_markdown(run_dir / "results", out))
    study, glance = study_markdown(root / "results" / "study", out)
    study += cpu_ablation_markdown(root / "results" / "ablations-cpu", root / "results" / "demo-cpu", out)
    (out / "study.md").write_text(study)
    (out / "study_glance.md").write_text(glance)
    (out / "verdict.md").write_text(verdict_markdown(root, out))
    (out / "seed_versus_measured.md").write_text(seed_markdown(root))
    (out / "reproduce.md").write_text(reproduce_markdown(root))
    bench, other = bench_records(root / "results" / "bench"), bench_records(root / "results" / "bench-h200-other")
    (out / "performance.md").write_text(bench_markdown(root / "results" / "bench", out, bench)
                                        + bench_summary_markdown(root / "results" / "bench-h200-other",
                                                                 "Other models and precisions on the H200", other)
                                        + bench_summary_markdown(root / "results" / "bench-cpu", "On a CPU")
                                        + scale_markdown(root / "results" / "scale"))
    from medcore.pages_product import gpu_check_markdown, product_bench_markdown

    (out / "product.md").write_text(product_bench_markdown(root / "results" / "bench-product"))
    (out / "gpu_check.md").write_text(gpu_check_markdown(root / "results" / "gpu-check"))
    (out / "scale_gpu.md").write_text(scale_gpu_markdown(root / "results" / "scale-h200", out))
    (out / "scaleout.md").write_text(scaleout_markdown(root / "results" / "scaleout", out,
                                                       fsdp_dir=root / "results" / "scaleout-fsdp"))
    (out / "run.md").write_text(run_markdown(run_dir, status))
    subs = notes_substitutions(root / "results" / "bench", records=bench, more_records=other)
    (out / "substitutions.json").write_text(json.dumps(subs, indent=1))
    return subs
