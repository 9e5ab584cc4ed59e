"""The book's record-driven parts, written into ``book/_generated/`` each time the book is built.

The book never executes a notebook; these functions read committed run records and write markdown tables and
PNG figures that the hand-written pages include (``{include} _generated/<name>.md``), plus the values of the
"measured" cells of ``book/performance_notes.md`` (MyST substitutions). No figure is typed into a page:

- ``results.md`` - the results table and figure of the pipeline run the book shows (intro and results page);
- ``study.md`` / ``study_glance.md`` - the GPU study (``results/study/``, real weights): before/after with
  intervals, the paired test, tiers and choice types, loss curves, the ablation, the scoring cost;
- ``performance.md`` - the benchmark (``results/bench/``, random weights of the Gemma-2B shape);
- ``scale_gpu.md`` - the results table per precision at the Gemma-2B shape (``results/scale-h200/``, random
  weights): size, training and scoring speed and memory;
- ``scaleout.md`` - one GPU against DDP (random weights) and the real-weight DDP fine-tune against the one-GPU
  record (``results/scaleout/``), FSDP from ``results/scaleout-fsdp/`` when it exists;
- ``run.md`` - the command, the notebooks and the machine of the run (reproducibility page).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from medcore import analysis as an
from medcore.results import load_run, load_runs, run_dirs

BENCH_LABEL = "random weights (Gemma-2B shape)"


def _save(fig, out: Path, name: str, alt: str) -> str:
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    return f"\n![{alt}]({name})\n"


def _note(text: str) -> str:
    return f"```{{note}}\n{text}\n```\n"


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


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    return df.map(lambda v: f"{v:,.0f}" if isinstance(v, float) and abs(v) >= 1000 else
                  f"{v:.3g}" if isinstance(v, float) else v)


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

    parts += ["\n### The answer-letter prior\n", _letter_prior(study_dir, main)]

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
                              "machine": ["shared (see note)" if isinstance(n, str) and n else "own GPU"
                                          for n in ablations["run_note"]]})
        parts.append(an.markdown_table(_fmt(shown)))
        for note in sorted({n for n in ablations["run_note"] if isinstance(n, str) and n}):
            runs_noted = ", ".join(f"`{r}`" for r, n in zip(ablations["run"], ablations["run_note"]) if n == note)
            parts.append("\n" + _note(f"{runs_noted}: {note}. Compare their training seconds and examples/s "
                                       "with each other, not with the runs that had a GPU of their own."))
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


# ---- the benchmark --------------------------------------------------------------------------------------------

def _letter_prior(study_dir: Path, main: pd.DataFrame) -> str:
    """Predicted-letter shares of each scoring record beside the key's, and the always-the-commonest-letter score.

    A fine-tuned model can gain accuracy by learning which letter the key favours rather than medicine; this
    table lets the reader see whether the gain exceeds what that prior alone gives.
    """
    from medcore.results import load_run

    rows, key = [], None
    for run, model in zip(main["run"], main["model"]):
        letters = pd.DataFrame(load_run(study_dir / run)["metrics"].get("letters") or [])
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


def _bench_record(bench_dir: Path) -> tuple[Path, dict] | None:
    records = run_dirs(bench_dir)
    return (records[-1], load_run(records[-1])) if records else None


def bench_markdown(bench_dir: Path, out: Path) -> str:
    """The performance page's body from the newest record in ``results/bench``."""
    from medcore import plots

    found = _bench_record(bench_dir)
    if found is None:
        return _note(f"No benchmark record yet: `results/{bench_dir.name}/` is empty or missing. Run "
                     "`python -m medcore bench` on a GPU and commit its record; this page then shows it.")
    path, rec = found
    m, env = rec["metrics"], rec["environment"] or {}
    weights = BENCH_LABEL if not m.get("real_weights") else "real weights"
    c = m.get("conditions", {})
    parts = [f"Record `{path.name}`: `{m.get('model')}` (**{weights}**: speed and memory only), {c.get('precision')}"
             f"{' + double quantization' if c.get('double_quant') else ''}, LoRA r={c.get('lora_r')} "
             f"{c.get('lora_targets')}, on {m.get('device')}; torch {c.get('torch')}, transformers "
             f"{c.get('transformers')}, bitsandbytes {c.get('bitsandbytes')}, git commit "
             f"`{str(env.get('git_commit'))[:10]}`.\n"]
    train = pd.DataFrame(m.get("training", []))
    if len(train):
        shown = pd.DataFrame({"recipe": train["recipe"], "real tokens/s": train["real_tokens_per_s"],
                              "examples/s": train["examples_per_s"], "peak memory (GB)": train["peak_memory_bytes"] / 1e9,
                              "MFU": train["mfu"].map(lambda v: f"{v:.1%}"),
                              "padding share": train["padding_share"].map(lambda v: f"{v:.1%}"),
                              "steps timed": train["steps"], "weights": weights})
        parts += [f"\n## Training ({weights})\n",
                  f"Token budget {c.get('token_budget')} (medcore) against {c.get('baseline_batch_size')} rows padded "
                  f"to {c.get('pad_length')} (baseline); gradient checkpointing "
                  f"{'on' if c.get('gradient_checkpointing') else 'off'}, optimizer {c.get('optimizer')}. "
                  f"Peak memory: {train['peak_memory_kind'].iloc[0]}.\n\n", an.markdown_table(shown)]
    score = pd.DataFrame(m.get("scoring", []))
    if len(score):
        shown = pd.DataFrame({"scorer": score["scorer"], "questions": score["questions"],
                              "forward sequences": score["forward_sequences"], "seconds": score["seconds"],
                              "questions/s": score["questions_per_s"], "peak memory (GB)": score["peak_memory_bytes"] / 1e9,
                              "weights": weights})
        check = m.get("scoring_check", {})
        parts += [f"\n## Scoring ({weights})\n", an.markdown_table(shown),
                  f"\nBoth scorers chose the same letter on {check.get('agreement', float('nan')):.1%} of "
                  f"{check.get('compared')} questions (batch {check.get('batch_size')}).\n"]
    if len(train):
        fig = plots.compare_bars(train.assign(peak_memory_gb=train["peak_memory_bytes"] / 1e9), by="recipe",
                                 metrics={"real_tokens_per_s": "real tokens/s", "examples_per_s": "examples/s",
                                          "peak_memory_gb": "peak memory (GB)"},
                                 title=f"Training on {m.get('device')} ({weights})")
        parts.append(_save(fig, out, "bench_training.png", f"Training speed and memory, {weights}"))
    if len(score):
        fig = plots.compare_bars(score.assign(peak_memory_gb=score["peak_memory_bytes"] / 1e9,
                                              scorer=score["scorer"].str.split(" ").str[0]), by="scorer",
                                 metrics={"questions_per_s": "questions/s", "seconds": "seconds for all questions",
                                          "peak_memory_gb": "peak memory (GB)"},
                                 title=f"Scoring on {m.get('device')} ({weights})")
        parts.append(_save(fig, out, "bench_scoring.png", f"Scoring speed and memory, {weights}"))
    lever_rows = []
    for rpath in run_dirs(bench_dir):  # every bench record's levers, in name order
        rm = load_run(rpath)["metrics"]
        rtrain = {t["recipe"]: t for t in rm.get("training", [])}
        if "medcore" not in rtrain:
            continue
        warm = _repeat_rate(rm)
        for lever in rm.get("levers", []):
            if lever.get("error"):
                lever_rows.append({"record": rpath.name, "variant": lever["variant"], "real tokens/s": "failed: "
                                   + str(lever["error"])[:80]})
                continue
            lever_rows.append({"record": rpath.name, "variant": lever["variant"],
                               "real tokens/s": lever["real_tokens_per_s"], "examples/s": lever["examples_per_s"],
                               "peak memory (GB)": lever["peak_memory_bytes"] / 1e9,
                               "MFU": f"{lever['mfu']:.1%}" if lever.get("mfu") is not None else "",
                               "vs the base row": f"{lever['real_tokens_per_s'] / rtrain['medcore']['real_tokens_per_s']:.2f}x",
                               "vs the repeats": f"{lever['real_tokens_per_s'] / warm:.2f}x" if warm else "",
                               "weights": weights})
    if lever_rows:
        parts += [f"\n## Levers ({weights})\n", "One setting of the medcore recipe changed at a time, against the "
                  "record's own medcore row (the base row). Where a record re-times the unchanged recipe "
                  "(`medcore recipe again, unchanged`), the last column compares with the mean of those repeats.\n\n",
                  an.markdown_table(_fmt(pd.DataFrame(lever_rows)))]
        warm = _repeat_rate(m)
        if warm and len(train):
            base = train.set_index("recipe")
            parts.append("\n" + _note(
                f"In `{path.name}` the unchanged recipe, timed again after the base row, ran at {warm:,.0f} real "
                f"tokens/s on average against {base.loc['medcore', 'real_tokens_per_s']:,.0f} for the base row: the base "
                "row was timed cold (token-budget batches come in many shapes, and its 3 warm-up steps did not cover "
                "them). Against the repeats, medcore / baseline is "
                f"{warm / base.loc['baseline', 'real_tokens_per_s']:.2f}x (the baseline timed once). The bench now "
                "warms every batch shape before timing (`--no-warm-shapes` turns that off); that change has not yet "
                "been measured on the GPU."))
    targets = pd.DataFrame(m.get("targets", []))
    if len(targets):
        shown = pd.DataFrame({"target": targets["target"], "goal": targets["goal"],
                              "measured": [_measured(v, u) for v, u in zip(targets["measured"], targets["unit"])],
                              "result": targets["met"].map({True: "met", False: "not met"}),
                              "under the target's conditions": targets["conditions_match"].map({True: "yes", False: "no"}),
                              "weights": weights})
        parts += [f"\n## Targets ({weights})\n", an.markdown_table(shown)]
    return "\n".join(parts)


def _repeat_rate(metrics: dict) -> float | None:
    """Mean real tokens/s of a bench record's ``repeat`` levers (the unchanged recipe timed again), if any."""
    rates = [lv["real_tokens_per_s"] for lv in metrics.get("levers", []) if lv.get("lever") == "repeat"
             and not lv.get("error")]
    return sum(rates) / len(rates) if rates else None


def _measured(value: float, unit: str) -> str:
    return f"{value:.1%}" if unit == "%" else f"{value:.2f}x" if unit == "x" else f"{value:.3g} {unit}"


NOTES_CELLS = ("train_ratio", "train_mfu", "baseline_mfu", "train_peak", "baseline_peak", "score_seconds",
               "score_ratio", "lever_attn", "lever_compile", "lever_optim", "lever_budget_8192", "lever_budget_16384",
               "lever_ckpt", "lever_repeat", "matmul")


def notes_substitutions(bench_dir: Path) -> dict[str, str]:
    """Values of the measured cells of ``book/performance_notes.md`` (``{{ measured_<cell> }}``), every one
    read from the bench record; "not measured" where the record has no such measurement."""
    values = dict.fromkeys(NOTES_CELLS, "not measured")
    found = _bench_record(bench_dir)
    if found is None:
        return {f"measured_{k}": "no benchmark record yet" for k in NOTES_CELLS}
    path, rec = found
    m = rec["metrics"]
    src = f" (`{path.name}`, {BENCH_LABEL})" if not m.get("real_weights") else f" (`{path.name}`)"
    targets = {t["target"]: t for t in m.get("targets", [])}

    def target(prefix: str) -> str:
        t = next((t for name, t in targets.items() if name.startswith(prefix)), None)
        return f": target {t['goal']} {'met' if t['met'] else 'not met'}" if t else ""
    train = {t["recipe"]: t for t in m.get("training", [])}
    if "medcore" in train and "baseline" in train:
        med, base = train["medcore"], train["baseline"]
        values.update(train_ratio=f"**{med['real_tokens_per_s'] / base['real_tokens_per_s']:.2f}x** "
                                  f"({med['real_tokens_per_s']:,.0f} / {base['real_tokens_per_s']:,.0f} real tokens/s)"
                                  f"{target('training real tokens/s')}",
                      train_mfu=f"**{med['mfu']:.1%}**{target('training fraction')}",
                      baseline_mfu=f"**{base['mfu']:.1%}**",
                      train_peak=f"**{med['peak_memory_bytes'] / 1e9:.2f} GB**{target('QLoRA training peak')}",
                      baseline_peak=f"**{base['peak_memory_bytes'] / 1e9:.2f} GB**")
    score = {s["scorer"].split(" ")[0]: s for s in m.get("scoring", [])}
    if "medcore" in score:
        one = score["medcore"]
        values["score_seconds"] = f"**{one['seconds']:.1f} s** for {one['questions']:,} questions{target('seconds to score')}"
        if "harness-style" in score:
            values["score_ratio"] = (f"**{one['questions_per_s'] / score['harness-style']['questions_per_s']:.2f}x** "
                                     f"({one['questions_per_s']:,.0f} / {score['harness-style']['questions_per_s']:,.0f} "
                                     f"questions/s){target('scoring questions/s')}")
    lever_cells: dict[str, str] = {}
    repeat_from = None
    for rpath in run_dirs(bench_dir):  # in name order (a record named later replaces a lever measured earlier)
        rm = load_run(rpath)["metrics"]
        rtrain = {t["recipe"]: t for t in rm.get("training", [])}
        rsrc = f" (`{rpath.name}`, {BENCH_LABEL})" if not rm.get("real_weights") else f" (`{rpath.name}`)"
        warm = _repeat_rate(rm)
        for lever in rm.get("levers", []):
            if lever.get("error") or "medcore" not in rtrain:
                continue
            base = rtrain["medcore"]
            gain = lever["real_tokens_per_s"] / base["real_tokens_per_s"] - 1
            text = (f"**{gain:+.0%} real tokens/s** against the base row, peak {lever['peak_memory_bytes'] / 1e9:.2f} GB "
                    f"({(lever['peak_memory_bytes'] - base['peak_memory_bytes']) / 1e9:+.2f} GB)")
            if warm:
                text += f"; {lever['real_tokens_per_s'] / warm - 1:+.0%} against the repeats' mean"
            key = f"budget_{lever['token_budget']}" if lever["lever"] == "budget" else lever["lever"]
            if key == "repeat":  # the first repeat of a record is the one shown (the notes say so)
                if repeat_from == rpath:
                    continue
                repeat_from = rpath
            lever_cells[key] = text + rsrc
    values.update({f"lever_{k}": v for k, v in lever_cells.items()})
    if m.get("matmul_tflops"):
        values["matmul"] = f"{m['matmul_tflops']:.0f} TFLOP/s"
    return {f"measured_{k}": (v + src if v not in ("not measured",) and not k.startswith("lever_") else v)
            for k, v in values.items()}


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
    env = load_runs(abl_dir).iloc[0]
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


def scale_markdown(scale_dir: Path) -> str:
    """The measured footprint per precision of every ``results/scale/*-footprint`` record (model size row)."""
    parts = []
    for run in sorted(scale_dir.glob("*-footprint")) if scale_dir.is_dir() else []:
        from medcore.results import load_run

        rec = load_run(run)
        table = pd.DataFrame(rec["metrics"]["footprint"])
        cols = {"precision": "precision", "embedding_bytes": "embedding", "attention_bytes": "attention",
                "mlp_bytes": "MLP", "quant_constant_bytes": "quantization constants", "total_bytes": "in memory",
                "disk_bytes": "on disk"}
        shown = table[list(cols)].rename(columns=cols)
        for col in list(cols.values())[1:]:
            shown[col] = (shown[col] / 1e9).map(lambda v: f"{v:.3f} GB")
        env = rec["environment"]
        weights = "real" if env.get("real_weights") else "**random**"
        parts += [f"\n### Model size: `{rec['config']['model']['source']}` ({weights} weights)\n",
                  f"Measured on {env.get('device_name') or env.get('device') or env.get('platform', '?')} "
                  f"(record `results/{scale_dir.name}/{run.name}`): bytes of every tensor by module kind, "
                  "the quantization constants (absmax, and with double quantization their own 8-bit "
                  "constants), and the saved checkpoint on disk. bitsandbytes leaves the embedding in bf16.\n\n",
                  an.markdown_table(shown)]
    return "\n".join(parts)


# ---- the GPU scale table (random weights, Gemma-2B shape, per precision) ---------------------------------------

SCALE_PRECISIONS = (("bf16", "bf16"), ("int8", "int8"), ("nf4", "NF4"), ("nf4+dq", "NF4+DQ"))


def _gb(value: Any) -> str:
    return "—" if value is None or pd.isna(value) else f"{value / 1e9:.2f}"


def _load(path: Path) -> dict[str, Any] | None:
    return load_run(path) if (path / "metrics.json").is_file() else None


def _machine(env: dict[str, Any]) -> str:
    return str(env.get("device_name") or env.get("device") or env.get("gpu") or env.get("platform") or "?")


def scale_gpu_rows(scale_dir: Path, prefix: str) -> pd.DataFrame:
    """One row per precision of the ``<prefix>-footprint``, ``-<p>-cost`` and ``-<p>-train`` records (NaN where a
    record is missing): bytes in memory and on disk, training rates and memory, scoring rate and latency."""
    foot = _load(scale_dir / f"{prefix}-footprint")
    sizes = {f["precision"]: f for f in (foot["metrics"].get("footprint", []) if foot else [])}
    rows = []
    for precision, label in SCALE_PRECISIONS:
        name = f"{prefix}-{precision.replace('+', '-')}"
        cost = (_load(scale_dir / f"{name}-cost") or {}).get("metrics", {}).get("cost") or {}
        train = _load(scale_dir / f"{name}-train")
        t = train["metrics"] if train else {}
        size = sizes.get(precision, {})
        rows.append({
            "precision": precision, "label": label, "memory_bytes": size.get("total_bytes"),
            "disk_bytes": size.get("disk_bytes"), "tokens_per_s": t.get("real_tokens_per_s"),
            "steady_tokens_per_s": t.get("steady_real_tokens_per_s"), "examples_per_s": t.get("examples_per_s"),
            "peak_bytes": t.get("peak_memory_bytes"), "resident_bytes": t.get("resident_memory_bytes"),
            "adapter_bytes": 4 * t["parameters"]["trainable"] if t.get("parameters") else None,  # peft: fp32 LoRA
            "steps": t.get("global_step"), "optimizer": t.get("optimizer"), "n_train": t.get("n_train"),
            "train_config": (train or {}).get("config", {}).get("train", {}),
            "best_qps": cost.get("best_qps"), "best_batch": cost.get("best_batch_size"),
            "latency_ms": cost.get("latency_ms_median"), "latency_ms_p90": cost.get("latency_ms_p90"),
            "batch_sizes": [b["batch_size"] for b in cost.get("throughput", [])],
            "conditions": cost.get("conditions", {}), "latency_n": cost.get("latency_n"),
            "env": (train or {}).get("environment") or (foot or {}).get("environment") or {}})
    df = pd.DataFrame(rows)
    for col in ("memory_bytes", "resident_bytes", "peak_bytes", "adapter_bytes"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["above_resident_bytes"] = df["peak_bytes"] - df["resident_bytes"]
    df["held_beyond_model_bytes"] = df["resident_bytes"] - df["memory_bytes"]
    return df


def _joined(values) -> str:
    kept = (v for v in values if v is not None and not (isinstance(v, float) and pd.isna(v)))
    values = [str(v) for v in dict.fromkeys(kept)]
    return " / ".join(values) if values else "?"


def scale_gpu_markdown(scale_dir: Path, out: Path) -> str:
    """The seed's results table at the paper's scale: the Gemma-2B shape with RANDOM weights per precision, from the
    records ``python -m medcore study --parts scale`` writes (``results/scale-h200``), then their footprint detail."""
    from medcore import plots

    footprints = sorted(scale_dir.glob("*-footprint")) if scale_dir.is_dir() else []
    if not footprints:
        return _note(f"No GPU scale record yet: `results/{scale_dir.name}/` is empty or missing. Run `python -m "
                     f"medcore study --parts scale --set results_dir=results/{scale_dir.name}` on a GPU and commit "
                     "its records; this section then shows them.")
    parts = []
    for foot in footprints:
        prefix = foot.name.removesuffix("-footprint")
        df = scale_gpu_rows(scale_dir, prefix)
        env = next((e for e in df["env"] if e), {})
        device = _machine(env) if env.get("device") or env.get("device_name") else \
            _joined(c.get("device_name") for c in df["conditions"])
        shown = pd.DataFrame({
            "precision": df["label"], "in memory (GB)": df["memory_bytes"].map(_gb),
            "on disk (GB)": df["disk_bytes"].map(_gb),
            "training real tokens/s (steady)": df["steady_tokens_per_s"].map(
                lambda v: "—" if v is None or pd.isna(v) else f"{v:,.0f}"),
            "training peak memory (GB)": df["peak_bytes"].map(_gb),
            "peak above resident (GB)": df["above_resident_bytes"].map(_gb),
            "held before the first step beyond the model (GB)": df["held_beyond_model_bytes"].map(_gb),
            "scoring questions/s (best batch)": [
                "—" if q is None or pd.isna(q) else f"{q:,.0f} (batch {int(b)})"
                for q, b in zip(df["best_qps"], df["best_batch"])],
            "batch-1 latency, median (ms)": df["latency_ms"].map(
                lambda v: "—" if v is None or pd.isna(v) else f"{v:.1f}")})
        foot_cfg = load_run(foot)["config"] or {}
        model = foot_cfg.get("model", {}).get("source", "?")
        parts += [f"\n### The seed's results table at the paper's scale: `{model}`, random weights\n",
                  _note(f"**Random weights.** `{model}` has the Gemma-2B shape with random weights: these rows "
                        "measure size, speed and memory only; no accuracy can be read from them."),
                  "\n", an.markdown_table(shown)]
        tc = next((c for c in df["train_config"] if c), {})
        cond = next((c for c in df["conditions"] if c), {})
        steps = _joined([None if v is None or pd.isna(v) else int(v) for v in df["steps"]])
        adapter = df["adapter_bytes"].dropna()
        batches = _joined(", ".join(map(str, b)) for b in df["batch_sizes"] if b)
        facts = (f"Records `results/{scale_dir.name}/{prefix}-*` on {device}; git commit "
                 f"`{str(env.get('git_commit'))[:10]}`. Training: token budget {tc.get('token_budget', '?')} per "
                 f"step, at most {tc.get('max_batch_size', '?')} rows, gradient checkpointing "
                 f"{'on' if tc.get('gradient_checkpointing') else 'off'}, {steps} optimizer steps "
                 f"({_joined(df['optimizer'])}), LoRA r={foot_cfg.get('lora', {}).get('r', '?')}; "
                 "real tokens/s steady-state (the first steps left out); peak and resident memory from the CUDA "
                 "allocator (resident: allocated when the first step began). Scoring: "
                 f"{cond.get('n_questions', '?')} questions (mean prompt "
                 f"{cond.get('mean_prompt_tokens', float('nan')):.0f} tokens) at batch sizes {batches}; latency over "
                 f"{_joined(df['latency_n'])} questions one at a time. In memory and on disk: the footprint "
                 f"record `{foot.name}`, detailed below.\n")
        parts.append("\n" + facts)
        if env.get("run_note"):
            parts.append(f"\nRun note (from the records): *{env['run_note']}*.\n")
        known = df.dropna(subset=["held_beyond_model_bytes"])
        if len(known):
            beyond = known["held_beyond_model_bytes"] - known["adapter_bytes"].fillna(0)
            each = ", ".join(f"{v / 1e9:.1f} GB ({p})" for v, p in zip(beyond, known["label"]))
            adapter_text = (f"the adapter: {adapter.iloc[0] / 4 / 1e6:.1f} M trainable parameters in fp32, "
                            f"{adapter.iloc[0] / 1e9:.2f} GB" if len(adapter) else "the adapter")
            parts.append("\n" + _note(
                "The training rows ran in one process after the scoring and footprint parts; the memory allocated "
                f"when the first training step began exceeded the model plus adapter by about {each} "
                "(memory from earlier parts not released; cause not found), so the raw peak overstates; 'peak "
                "above resident' (the step's own activations, gradients and optimizer state) is unaffected. The "
                f"column 'held before the first step beyond the model' includes {adapter_text}."))
        plotted = df.assign(memory_gb=df["memory_bytes"] / 1e9, above_gb=df["above_resident_bytes"] / 1e9,
                            precision=df["label"])
        if plotted[["steady_tokens_per_s", "best_qps"]].notna().any().any():
            metrics = {"steady_tokens_per_s": "training real tokens/s (steady)",
                       "best_qps": "scoring questions/s (best batch)", "memory_gb": "in memory (GB)",
                       "above_gb": "training peak above resident (GB)"}
            fig = plots.compare_bars(plotted, by="precision", metrics=metrics,
                                     title=f"Gemma-2B shape, random weights, on {device}")
            name = "scale_gpu.png" if len(footprints) == 1 else f"scale_gpu_{prefix}.png"
            parts.append(_save(fig, out, name, f"Training and scoring speed and memory per precision on {device}, "
                                               "random weights"))
    return "\n".join(parts) + "\n" + scale_markdown(scale_dir)


# ---- scale-out on several GPUs of one host ---------------------------------------------------------------------

def _error_line(log: Path) -> str | None:
    """The first ``SomeError: message`` line of a log (rank prefixes dropped), or None."""
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)$", line)
        if found and "ChildFailedError" not in found.group(1):
            return f"{found.group(1)}: {found.group(2).strip()}"
    return None


def _summaries(folder: Path) -> list[tuple[Path, dict]]:
    """The scale-out summary records (metrics with ``runs`` and ``training``) under ``folder``, oldest name first."""
    found = []
    for path in run_dirs(folder) if folder.is_dir() else []:
        rec = load_run(path)
        if isinstance(rec["metrics"], dict) and "runs" in rec["metrics"] and "training" in rec["metrics"]:
            found.append((path, rec))
    return found


def _runs_table(summary: dict, folder: Path) -> str:
    rows = []
    for r in summary.get("runs", []):
        log = folder / "logs" / f"{r['name']}.log"
        status = r.get("status") or "?"
        if status != "ok":
            error = _error_line(log)
            status = f"**{status}**" + (f" (exit {r.get('exit')})" if r.get("exit") is not None else "") + \
                (f": `{error}`" if error else "")
        rows.append({"run": r["name"], "role": r.get("role"), "GPUs": r.get("gpus"), "status": status,
                     "seconds": f"{r['seconds']:.0f}" if r.get("seconds") is not None else "—",
                     "log": f"`results/{folder.name}/logs/{log.name}`" if log.is_file() else "—"})
    return an.markdown_table(pd.DataFrame(rows)) if rows else ""


def _num_text(value: Any) -> str:
    return "?" if value is None else f"{value:g}"


def _per_gpu(values: list | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "—"


def _memory_rows(training: dict, roles: tuple[str, ...]) -> pd.DataFrame:
    names = {"single": "one GPU", "ddp": "DDP", "fsdp": "FSDP + QLoRA", "accuracy-train": "DDP (real weights)"}
    rows = []
    for role in roles:
        t = training.get(role)
        if not t:
            continue
        rows.append({"setup": names.get(role, role), "record": f"{t.get('run')}-train", "GPUs": t.get("gpus"),
                     "steps": t.get("steps"), "optimizer": t.get("optimizer"),
                     "real tokens/s": f"{t['real_tokens_per_s']:,.0f}" if t.get("real_tokens_per_s") else "—",
                     "real tokens/s, steady": f"{t['steady_real_tokens_per_s']:,.0f}"
                     if t.get("steady_real_tokens_per_s") else "—",
                     "peak memory per GPU (GB)": _per_gpu(t.get("peak_memory_gb_per_gpu")),
                     "resident memory per GPU (GB)": _per_gpu(t.get("resident_memory_gb_per_gpu"))})
    return pd.DataFrame(rows)


def scaleout_markdown(scaleout_dir: Path, out: Path, fsdp_dir: Path | None = None) -> str:
    """Scale-out on the GPUs of one host from the ``scaleout-summary`` record ``python -m medcore scaleout`` writes
    (``results/scaleout``): the runs and their status, one GPU against DDP (random weights), the real-weight DDP
    fine-tune against the one-GPU record, and FSDP (``fsdp_dir``, else the failed run's status)."""
    from medcore import plots

    found = _summaries(scaleout_dir)
    if not found:
        return _note(f"No scale-out record yet: `results/{scaleout_dir.name}/` is empty or missing. Run `python -m "
                     f"medcore scaleout --gpus 2 --parts throughput,fsdp,accuracy --results-dir "
                     f"results/{scaleout_dir.name}` on a host with two GPUs and commit its records; this section "
                     "then shows them.")
    path, rec = found[-1]
    m, env, cfg = rec["metrics"], rec["environment"] or {}, rec["config"] or {}
    training, root = m.get("training", {}), scaleout_dir.parent.parent
    gpus = max([r.get("gpus") or 1 for r in m.get("runs", [])] or [1])
    model = cfg.get("model", "?")
    parts = ["\n### The runs\n",
             f"Record `results/{scaleout_dir.name}/{path.name}`, written by `python -m medcore scaleout --gpus "
             f"{cfg.get('gpus', gpus)} --parts {cfg.get('parts', '?')}` on {env.get('gpu_count', gpus)} x "
             f"{_machine(env)} (git commit `{str(env.get('git_commit'))[:10]}`). Every run is its own process with "
             f"a {_num_text(cfg.get('run_limit'))} s limit; one that fails leaves the others. A failed run's "
             "output is in the log named beside it.\n\n", _runs_table(m, scaleout_dir)]
    if env.get("run_note"):
        parts.append(f"\nRun note (from the record): *{env['run_note']}*.\n")

    throughput = _memory_rows(training, ("single", "ddp", "fsdp"))
    parts.append("\n### Throughput: one GPU against DDP (random weights, Gemma-2B shape)\n")
    if len(throughput):
        parts.append(_note(f"**Random weights.** `{model}` has the Gemma-2B shape with random weights: speed and "
                           "memory only, no accuracy."))
        single, ddp = training.get("single", {}), training.get("ddp", {})
        speed = pd.DataFrame([{
            "rate": label, "one GPU (tokens/s)": f"{single[key]:,.0f}", f"DDP on {ddp['gpus']} GPUs (tokens/s)":
            f"{ddp[key]:,.0f}", "speedup": f"{m[f'speedup_{key}']:.2f}x",
            "scaling efficiency": f"{m[f'scaling_efficiency_{key}']:.1%}"}
            for key, label in (("real_tokens_per_s", "all steps"),
                               ("steady_real_tokens_per_s", "steady (first steps left out)"))
            if f"speedup_{key}" in m and single.get(key) and ddp.get(key)])
        parts += ["\n", an.markdown_table(throughput.assign(weights=BENCH_LABEL))]
        if len(speed):
            ratios = ", ".join(f"{name} {t['real_tokens_per_s'] / t['steady_real_tokens_per_s']:.0%}"
                               for name, t in (("one GPU", single), ("DDP", ddp))
                               if t.get("real_tokens_per_s") and t.get("steady_real_tokens_per_s"))
            parts += ["\n", an.markdown_table(speed),
                      f"\nScaling efficiency = DDP real tokens/s / ({ddp['gpus']} x one-GPU real tokens/s); same data, "
                      f"same per-GPU token budget ({cfg.get('token_budget', '?')}), "
                      f"{_joined([single.get('optimizer'), ddp.get('optimizer')])}. "
                      "The steady rate leaves out the first steps (kernel selection, allocator growth); the rate "
                      f"over all steps as a share of the steady one: {ratios}. An efficiency above 100% means each "
                      "DDP process ran faster than the one-GPU process; each setup was measured once, without "
                      "repeats.\n"]
            plotted = pd.DataFrame([{"setup": s, "real_tokens_per_s": t.get("real_tokens_per_s"),
                                     "steady_real_tokens_per_s": t.get("steady_real_tokens_per_s"),
                                     "peak_gb": max(t.get("peak_memory_gb_per_gpu") or [float("nan")])}
                                    for s, t in (("one GPU", single), (f"DDP x{ddp['gpus']}", ddp))])
            fig = plots.compare_bars(plotted, by="setup", metrics={
                "real_tokens_per_s": "real tokens/s, all steps", "steady_real_tokens_per_s": "real tokens/s, steady",
                "peak_gb": "peak memory per GPU (GB)"}, title=f"One GPU against DDP on {_machine(env)}: {BENCH_LABEL}")
            parts.append(_save(fig, out, "scaleout_throughput.png", f"One GPU against DDP, {BENCH_LABEL}"))
    else:
        parts.append(_note("No throughput measured: the one-GPU and DDP runs left no training record (see the "
                           "runs above)."))

    parts.append("\n### Accuracy: the real-weight fine-tune with DDP against one GPU\n")
    acc = m.get("accuracy")
    if acc:
        ref = Path(str(acc.get("reference_run", "")))
        ref_train = _load(root / ref.parent / f"{ref.name.removesuffix('-fine-tuned')}-train") if ref.name else None
        ref_n = (_load(root / ref) or {}).get("metrics", {}).get("n") if ref.name else None
        dtrain = training.get("accuracy-train", {})
        rows = []
        if acc.get("reference_accuracy") is not None:
            lo, hi = acc["reference_ci"]
            rows.append({"model": "one GPU", "record": f"`{ref}`", "questions": ref_n or "—",
                         "optimizer steps": (ref_train or {}).get("metrics", {}).get("global_step", "—"),
                         "accuracy [95% CI]": f"{acc['reference_accuracy']:.1%} [{lo:.1%}, {hi:.1%}]",
                         "inside the one-GPU interval": "—",
                         **dict.fromkeys(("McNemar b", "McNemar c", "McNemar p"), "—")})
        test = acc.get("mcnemar") or {}
        inside = acc.get("inside_reference_interval")
        rows.append({"model": f"DDP on {dtrain.get('gpus', gpus)} GPUs",
                     "record": f"`results/{scaleout_dir.name}/{dtrain.get('run', 'scaleout-real')}-fine-tuned`",
                     "questions": acc.get("n"), "optimizer steps": dtrain.get("steps", "—"),
                     "accuracy [95% CI]": f"{acc['accuracy']:.1%} [{acc['ci_low']:.1%}, {acc['ci_high']:.1%}]",
                     "inside the one-GPU interval": "—" if inside is None else "yes" if inside else "no",
                     "McNemar b": test.get("b", "—"), "McNemar c": test.get("c", "—"),
                     "McNemar p": f"{test['pvalue']:.2g}" if test.get("pvalue") is not None else "—"})
        source = ((_load(scaleout_dir / f"{dtrain.get('run')}-train") or {}).get("config") or {}).get("model", {})
        parts += [f"Real weights: `{source.get('source', '?')}` (the study profile's model), NF4 + double "
                  "quantization + LoRA, trained with DDP with "
                  "the global batch of the one-GPU run (per-GPU batch and token budget divided by the number of "
                  "GPUs), then scoring the whole evaluation split. Paired on the same questions: `b` questions only "
                  "the one-GPU model got right, `c` only the DDP one (exact McNemar test).\n\n",
                  an.markdown_table(pd.DataFrame(rows))]
        if dtrain:
            parts += ["\nThe DDP fine-tune's training (real weights):\n\n",
                      an.markdown_table(_memory_rows(training, ("accuracy-train",)))]
    else:
        parts.append(_note("Not measured: the summary has no accuracy (the accuracy part did not run or failed; "
                           "see the runs above)."))

    parts.append("\n### FSDP + QLoRA\n")
    fsdp_found = _summaries(fsdp_dir) if fsdp_dir is not None else []
    fsdp_rows = [(p, r) for p, r in fsdp_found if "fsdp" in r["metrics"].get("training", {})]
    if "fsdp" in training:
        fsdp_rows.insert(0, (path, rec))
    if fsdp_rows:
        for p, r in fsdp_rows:
            folder = p.parent
            parts += [f"Record `results/{folder.name}/{p.name}` ({BENCH_LABEL}): memory per GPU of FSDP (4-bit "
                      "weights stored in bf16 and sharded) against DDP.\n\n",
                      an.markdown_table(_memory_rows(r["metrics"]["training"], ("single", "ddp", "fsdp"))
                                        .assign(weights=BENCH_LABEL))]
            if folder != scaleout_dir:
                parts += ["\n", _runs_table(r["metrics"], folder)]
    else:
        failed = [r for p, rec_ in [(path, rec), *fsdp_found] for r in rec_["metrics"].get("runs", [])
                  if r.get("role") == "fsdp"]
        text = "FSDP + QLoRA: not measured."
        for r in failed:
            error = _error_line(scaleout_dir / "logs" / f"{r['name']}.log")
            code = f" (exit {r['exit']})" if r.get("exit") is not None else ""
            said = f" with `{error}`" if error else ""
            text += (f" The run `{r['name']}` ({r.get('gpus')} GPUs) ended **{r.get('status')}**{code}{said}; "
                     f"its output: `results/{scaleout_dir.name}/logs/{r['name']}.log`.")
        parts.append(_note(text))
    return "\n".join(parts)


def write_generated(book_dir: Path, run_dir: Path, status: dict[str, Any], root: Path) -> dict[str, str]:
    """Write every generated part into ``book_dir/_generated`` (emptied first); return the substitutions."""
    import matplotlib

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
    (out / "performance.md").write_text(bench_markdown(root / "results" / "bench", out)
                                        + scale_markdown(root / "results" / "scale"))
    (out / "scale_gpu.md").write_text(scale_gpu_markdown(root / "results" / "scale-h200", out))
    (out / "scaleout.md").write_text(scaleout_markdown(root / "results" / "scaleout", out,
                                                       fsdp_dir=root / "results" / "scaleout-fsdp"))
    (out / "run.md").write_text(run_markdown(run_dir, status))
    subs = notes_substitutions(root / "results" / "bench")
    (out / "substitutions.json").write_text(json.dumps(subs, indent=1))
    return subs
