"""The Performance page's benchmark parts (called by :func:`medcore.pages.write_generated`): the headline record
of ``results/bench/`` (random weights of the Gemma-2B shape), the levers of every record there, the profiles,
the targets, and :func:`notes_substitutions`, the values of the "measured" cells of
``book/performance_notes.md``. :func:`bench_summary_markdown` lists other benchmark records (other models,
precisions or machines), one row each.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from medcore import analysis as an
from medcore.page_parts import format_numbers as _fmt, note as _note, save_figure as _save
from medcore.results import load_run, run_dirs

BENCH_LABEL = "random weights (Gemma-2B shape)"


Records = list[tuple[Path, dict]]  # a folder's records, loaded once (bench_records) and passed to each page part


def bench_records(bench_dir: Path) -> Records:
    """Every record of `bench_dir`, loaded once, in name order. The headline is the last: records are named so
    that the newest sorts last."""
    return [(p, load_run(p)) for p in run_dirs(bench_dir)]


def _by_recipe(m: dict) -> dict:
    return {t["recipe"]: t for t in m.get("training", [])}


def _by_scorer(m: dict) -> dict:
    return {s["scorer"].split(" ")[0]: s for s in m.get("scoring", [])}


def _is_scoring(lever: dict) -> bool:
    return "score_batch_size" in lever


def _flags(c: dict) -> str:
    return (f"checkpointing {'on' if c.get('gradient_checkpointing') else 'off'}"
            f"{', compiled layers' if c.get('compile') else ''}"
            f"{', LoRA inputs bf16' if c.get('lora_inputs_bf16') else ''}")


def _setting(c: dict) -> str:
    return f"{c.get('token_budget')} tokens, {_flags(c)}"


def _source(rpath: Path, m: dict) -> str:
    """How a measured cell names its record: the name, and for random weights which shape and precision."""
    c = m.get("conditions", {})
    if m.get("real_weights"):
        return f" (`{rpath.name}`)"
    if m.get("model") == "random:gemma-2b" and c.get("precision", "nf4") == "nf4":
        return f" (`{rpath.name}`, {BENCH_LABEL})"
    return f" (`{rpath.name}`, random weights, `{m.get('model')}` shape, {c.get('precision')})"


def bench_markdown(bench_dir: Path, out: Path, records: Records | None = None) -> str:
    """The performance page's body: the headline record, then the levers, profiles and targets of every record."""
    records = bench_records(bench_dir) if records is None else records
    if not records:
        return _note(f"No benchmark record yet: `results/{bench_dir.name}/` is empty or missing. Run "
                     "`python -m medcore bench` on a GPU and commit its record; this page then shows it.")
    path, rec = records[-1]
    m, env = rec["metrics"], rec["environment"] or {}
    weights = BENCH_LABEL if not m.get("real_weights") else "real weights"
    c = m.get("conditions", {})
    parts = [f"Record `{path.name}`: `{m.get('model')}` (**{weights}**: speed and memory only), {c.get('precision')}"
             f"{' + double quantization' if c.get('double_quant') else ''}, LoRA r={c.get('lora_r')} "
             f"{c.get('lora_targets')}, on {m.get('device')}; torch {c.get('torch')}, transformers "
             f"{c.get('transformers')}, bitsandbytes {c.get('bitsandbytes')}, git commit "
             f"`{str(env.get('git_commit'))[:10]}`.\n"]
    if m.get("complete") is False:
        parts.append(_note(f"`{path.name}` stopped before its levers finished (`complete: false`): its training and "
                           "scoring rows are complete; the levers it lists are the ones it finished."))
    parts += _main_tables(m, c, weights, out)
    parts += _lever_tables(records, weights)
    parts += _budget_figure(records, weights, out)
    parts += _profile_tables(records)
    parts += _targets_table(m, records, weights)
    return "\n".join(parts)


def _main_tables(m: dict, c: dict, weights: str, out: Path) -> list[str]:
    from medcore import plots

    parts = []
    train = pd.DataFrame(m.get("training", []))
    if len(train):
        shown = pd.DataFrame({"recipe": train["recipe"], "real tokens/s": train["real_tokens_per_s"],
                              "examples/s": train["examples_per_s"], "peak memory (GB)": train["peak_memory_bytes"] / 1e9,
                              "MFU": train["mfu"].map(lambda v: f"{v:.1%}"),
                              "padding share": train["padding_share"].map(lambda v: f"{v:.1%}"),
                              "steps timed": train["steps"], "weights": weights})
        parts += [f"\n## Training ({weights})\n",
                  f"Token budget {c.get('token_budget')} (medcore, at most {c.get('max_batch_size')} rows) against "
                  f"{c.get('baseline_batch_size')} rows padded to {c.get('pad_length')} (baseline); gradient "
                  f"checkpointing {'on' if c.get('gradient_checkpointing') else 'off'}"
                  f"{'; medcore with each decoder layer compiled (`train.compile`)' if c.get('compile') else ''}; "
                  f"optimizer {c.get('optimizer')}. Every batch shape is stepped once untimed before the clock "
                  f"starts{'' if c.get('warm_all_shapes', True) else ' (not in this record)'}. "
                  f"Peak memory: {train['peak_memory_kind'].iloc[0]}.\n\n", an.markdown_table(shown)]
    score = pd.DataFrame(m.get("scoring", []))
    if len(score):
        first = score["cold_seconds"] if "cold_seconds" in score else pd.Series([None] * len(score))
        shown = pd.DataFrame({"scorer": score["scorer"], "questions": score["questions"],
                              "forward sequences": score["forward_sequences"], "first pass (s)": first,
                              "seconds": score["seconds"], "questions/s": score["questions_per_s"],
                              "peak memory (GB)": score["peak_memory_bytes"] / 1e9, "weights": weights})
        check = m.get("scoring_check", {})
        how = ("Each scorer is timed twice: the first pass of the process over the questions, then a second "
               "pass; seconds and questions/s are the second pass's." if "cold_seconds" in score
               else "Each scorer is timed after one untimed batch.")
        parts += [f"\n## Scoring ({weights})\n", f"Batch {check.get('batch_size')}"
                  f"{', both scorers under bf16 autocast' if check.get('autocast') else ''}. {how}\n\n",
                  an.markdown_table(_fmt(shown)),
                  f"\nBoth scorers chose the same letter on {check.get('agreement', float('nan')):.1%} of "
                  f"{check.get('compared')} questions (largest log-probability difference "
                  f"{check.get('max_abs_logprob_diff', float('nan')):.3f}).\n"]
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
    return parts


def _lever_tables(records: list[tuple[Path, dict]], weights: str, level: str = "##") -> list[str]:
    train_rows, score_rows = [], []
    for rpath, rec in records:  # every bench record's levers, in name order
        rm = rec["metrics"]
        rtrain = _by_recipe(rm)
        if "medcore" not in rtrain:
            continue
        base, rc = rtrain["medcore"], rm.get("conditions", {})
        warm = _repeat_rate(rm)
        one = (rm.get("scoring") or [{}])[0]
        checked = "score_autocast" in rc  # records before it compared choices with a differently trained adapter
        for lever in rm.get("levers", []):
            if lever.get("error"):
                (score_rows if _is_scoring(lever) else train_rows).append(
                    {"record": rpath.name, "variant": lever["variant"], "result": "failed: " + str(lever["error"])[:80]})
            elif _is_scoring(lever):
                score_rows.append({
                    "record": rpath.name, "variant": lever["variant"], "first pass (s)": lever.get("cold_seconds"),
                    "seconds": lever["seconds"], "questions/s": lever["questions_per_s"],
                    "peak memory (GB)": lever["peak_memory_bytes"] / 1e9,
                    "vs the base scoring": f"{lever['questions_per_s'] / one['questions_per_s']:.2f}x" if one else "",
                    "same choices as the base scoring": (f"{lever['agreement_with_base_scoring']:.1%}" if checked and
                                                         "agreement_with_base_scoring" in lever else "not checked"),
                    "weights": weights})
            else:
                train_rows.append({
                    "record": rpath.name, "base row": _setting(rc), "variant": lever["variant"],
                    "real tokens/s": lever["real_tokens_per_s"], "examples/s": lever["examples_per_s"],
                    "peak memory (GB)": lever["peak_memory_bytes"] / 1e9,
                    "MFU": f"{lever['mfu']:.1%}" if lever.get("mfu") is not None else "",
                    "vs the base row": f"{lever['real_tokens_per_s'] / base['real_tokens_per_s']:.2f}x",
                    "vs the repeats": f"{lever['real_tokens_per_s'] / warm:.2f}x" if warm else "",
                    "weights": weights})
    parts = []
    if train_rows:
        parts += [f"\n{level} Training levers ({weights})\n", "One setting of the medcore recipe changed at a time, "
                  "against the record's own medcore row (the base row, whose setting is shown). Where a record "
                  "re-times the unchanged recipe (`medcore recipe again, unchanged`), the last column compares with "
                  "the mean of those repeats.\n\n", an.markdown_table(_fmt(pd.DataFrame(train_rows)))]
    if score_rows:
        parts += [f"\n{level} Scoring levers ({weights})\n", "medcore's one-pass scorer alone, one setting changed, on "
                  "the record's questions. *First pass*: every batch shape new to the process. *Same choices* is "
                  "counted only in records that score every lever with the adapter the base scoring used (records "
                  "made before that fix say *not checked*).\n\n", an.markdown_table(_fmt(pd.DataFrame(score_rows)))]
    return parts


def _budget_figure(records: list[tuple[Path, dict]], weights: str, out: Path) -> list[str]:
    """Speed and peak memory against tokens per batch: every record's base row and its budget levers, one line
    per recipe setting (checkpointing, compile) and record."""
    rows = []
    names = [p.name for p, _ in records]
    shared = os.path.commonprefix(names) if len(names) > 1 else ""  # a line is named by the rest of its name
    for rpath, rec in records:
        rm, c = rec["metrics"], rec["metrics"].get("conditions", {})
        med = _by_recipe(rm).get("medcore")
        if med is None or c.get("device_type") != "cuda":
            continue
        label = (f"{rpath.name.removeprefix(shared) or 'first'}: checkpointing "
                 f"{'on' if c.get('gradient_checkpointing') else 'off'}{', compiled' if c.get('compile') else ''}"
                 f"{'' if 'warm_all_shapes' in c else ', timed cold'}")  # records before the per-shape warm-up
        points = [(c.get("token_budget"), med)] + [(lv["token_budget"], lv) for lv in rm.get("levers", [])
                                                    if lv.get("lever") == "budget" and not lv.get("error")]
        rows += [{"token_budget": b, "real_tokens_per_s": r["real_tokens_per_s"],
                  "peak_memory_gb": r["peak_memory_bytes"] / 1e9, "recipe": label} for b, r in points]
    if len({r["token_budget"] for r in rows}) < 2:
        return []
    from medcore import plots

    fig = plots.budget_curves(pd.DataFrame(rows), title=f"medcore's training recipe by token budget ({weights})")
    return ["\nEach record's base row and its token-budget levers, one line per record (its suffix) and setting:\n",
            _save(fig, out, "bench_budgets.png", f"Training speed and peak memory by token budget, {weights}")]


def _profile_tables(records: list[tuple[Path, dict]]) -> list[str]:
    parts = []
    for rpath, rec in records:
        for name, pr in (rec["metrics"].get("profile") or {}).items():
            if "error" in pr:
                parts.append(f"\nProfile of `{rpath.name}` ({name}) failed: {pr['error']}\n")
                continue
            unit = "training step" if name == "train" else "scoring batch"
            top = pd.DataFrame(pr["top_gpu_ops"][:8]).rename(columns={
                "name": "operator (most GPU time)", "calls_per_step": f"calls per {unit}",
                "self_gpu_ms_per_step": "GPU ms", "self_cpu_ms_per_step": "CPU ms (own)"})
            units = "training steps" if name == "train" else "scoring batches"
            parts += [f"\n### Profile: {units} of `{rpath.name}` (torch.profiler, {BENCH_LABEL})\n",
                      f"{pr['steps']} warm {units}: **{pr['wall_ms_per_step']:.0f} ms** of wall time per {unit}, of "
                      f"which the GPU ran kernels for **{pr['gpu_kernel_ms_per_step']:.0f} ms** "
                      f"({pr['gpu_busy_share']:.0%} busy); {pr['kernels_per_step']:,.0f} kernels and "
                      f"{pr['aten_calls_per_step']:,.0f} PyTorch operator calls per {unit}.\n\n",
                      an.markdown_table(_fmt(top))]
    return parts


def _target_elsewhere(target: dict, records: list[tuple[Path, dict]]) -> tuple[dict, str] | None:
    """The same target measured under its conditions in the record named last that has it, with that name."""
    key = target["target"].split(" (")[0]
    for rpath, rec in reversed(records):
        match = next((x for x in rec["metrics"].get("targets", []) if x["target"].split(" (")[0] == key
                      and x["conditions_match"]), None)
        if match:
            return match, rpath.name
    return None


def _targets_table(m: dict, records: list[tuple[Path, dict]], weights: str) -> list[str]:
    """The headline's targets; one that the headline did not measure under its conditions is taken from the
    record named last that did, and says so."""
    rows = []
    for t in m.get("targets", []):
        source = None
        found_in = None if t["conditions_match"] else _target_elsewhere(t, records)
        if found_in:
            t, source = found_in
        rows.append({"target": t["target"], "goal": t["goal"], "measured": _measured(t["measured"], t["unit"]),
                     "result": "met" if t["met"] else "not met",
                     "under the target's conditions": "yes" if t["conditions_match"] else "no",
                     "record": f"`{source}`" if source else "this page's record", "weights": weights})
    return [f"\n## Targets ({weights})\n", an.markdown_table(pd.DataFrame(rows))] if rows else []


def bench_summary_markdown(bench_dir: Path, title: str | None = None, records: Records | None = None) -> str:
    """One row per record in `bench_dir` (e.g. ``results/bench-cpu``): model, precision, machine, both recipes'
    training rates and scoring rates, and their ratios; the weights of each row are stated."""
    rows = []
    records = bench_records(bench_dir) if records is None else records
    for rpath, rec in records:
        m, c = rec["metrics"], rec["metrics"].get("conditions", {})
        train, score = _by_recipe(m), _by_scorer(m)
        if "medcore" not in train or "baseline" not in train:
            continue
        med, base = train["medcore"], train["baseline"]
        one, harness = score.get("medcore"), score.get("harness-style")
        stopped = " (stopped in its levers: `complete: false`)" if m.get("complete") is False else ""
        rows.append({
            "record": rpath.name + stopped, "model": m.get("model"),
            "weights": "real" if m.get("real_weights") else "random",
            "precision": f"{c.get('precision')}{' + DQ' if c.get('double_quant') and c.get('precision') != 'bf16' else ''}",
            "machine": f"{m.get('device')} ({c.get('torch_threads')} threads)" if c.get("device_type") == "cpu"
            else m.get("device"),
            "medcore setting": _setting(c),
            "training real tokens/s, medcore / baseline": f"{med['real_tokens_per_s']:,.0f} / "
                                                          f"{base['real_tokens_per_s']:,.0f}",
            "training ratio": f"{med['real_tokens_per_s'] / base['real_tokens_per_s']:.2f}x",
            "training peak, medcore / baseline (GB)": f"{med['peak_memory_bytes'] / 1e9:.2f} / "
                                                      f"{base['peak_memory_bytes'] / 1e9:.2f}",
            "scoring questions/s, one-pass / harness": (f"{one['questions_per_s']:,.1f} / {harness['questions_per_s']:,.1f}"
                                                        if one and harness else ""),
            "scoring ratio": f"{one['questions_per_s'] / harness['questions_per_s']:.2f}x" if one and harness else "",
            "questions scored": one["questions"] if one else ""})
    if not rows:
        return ""
    weights = " and ".join(sorted({"real weights" if rec["metrics"].get("real_weights") else "random weights"
                                   for _, rec in records}))
    return (f"\n## {title or 'Other benchmark records'} (`results/{bench_dir.name}/`)\n\n"
            "The same benchmark on other models, precisions or machines, one row per record, each with its own "
            "baseline measured in the same run. Peak memory on a CPU is the process's resident set size sampled "
            "during the timed steps.\n\n" + an.markdown_table(pd.DataFrame(rows))
            + "\n".join(_lever_tables(records, weights, "###")))


def _repeat_rate(metrics: dict) -> float | None:
    """Mean real tokens/s of a bench record's ``repeat`` levers (the unchanged recipe timed again), if any."""
    rates = [lv["real_tokens_per_s"] for lv in metrics.get("levers", []) if lv.get("lever") == "repeat"
             and not lv.get("error")]
    return sum(rates) / len(rates) if rates else None


def _measured(value: float, unit: str) -> str:
    return f"{value:.1%}" if unit == "%" else f"{value:.2f}x" if unit == "x" else f"{value:.3g} {unit}"


NOTES_CELLS = ("train_ratio", "train_mfu", "baseline_mfu", "train_peak", "baseline_peak", "score_seconds",
               "score_ratio", "lever_attn", "lever_compile", "lever_optim", "lever_budget_8192", "lever_budget_16384",
               "lever_ckpt", "lever_repeat", "matmul", "lever_budget_4096", "lever_budget_32768", "lever_budget_65536",
               "lever_cudnn", "lever_lora_cast", "lever_peft_cast",
               "lever_score_batch", "lever_score_autocast", "lever_score_cold", "profile_train")


def notes_substitutions(bench_dir: Path, more: Sequence[Path] = (), records: Records | None = None,
                        more_records: Records | None = None) -> dict[str, str]:
    """Values of the measured cells of ``book/performance_notes.md`` (``{{ measured_<cell> }}``), every one
    read from the bench record; "not measured" where the record has no such measurement. A lever cell shows the
    record named last that has the lever, except a token-budget cell, which lists every record's row at that
    budget with the row's setting (records timed cold, before the per-shape warm-up, left out). Records in the
    folders
    `more` (other models and precisions) fill only the lever cells that no record of `bench_dir` fills, each of
    their levers added to the cell."""
    values = dict.fromkeys(NOTES_CELLS, "not measured")
    records = bench_records(bench_dir) if records is None else records
    if not records:
        return {f"measured_{k}": "no benchmark record yet" for k in NOTES_CELLS}
    path, rec = records[-1]
    m = rec["metrics"]
    src = _source(path, m)
    targets = {t["target"]: t for t in m.get("targets", [])}

    def target(prefix: str) -> str:
        t = next((t for name, t in targets.items() if name.startswith(prefix)), None)
        return f": target {t['goal']} {'met' if t['met'] else 'not met'}" if t else ""
    train = _by_recipe(m)
    if "medcore" in train and "baseline" in train:
        med, base = train["medcore"], train["baseline"]
        values.update(train_ratio=f"**{med['real_tokens_per_s'] / base['real_tokens_per_s']:.2f}x** "
                                  f"({med['real_tokens_per_s']:,.0f} / {base['real_tokens_per_s']:,.0f} real tokens/s)"
                                  f"{target('training real tokens/s')}",
                      train_mfu=f"**{med['mfu']:.1%}**{target('training fraction')}",
                      baseline_mfu=f"**{base['mfu']:.1%}**",
                      train_peak=f"**{med['peak_memory_bytes'] / 1e9:.2f} GB**{target('QLoRA training peak')}",
                      baseline_peak=f"**{base['peak_memory_bytes'] / 1e9:.2f} GB**")
        memory = next((t for t in m.get("targets", []) if t["target"].startswith("QLoRA training peak")), None)
        if memory and not memory["conditions_match"]:  # the headline is not at 4,096 tokens: the record that is
            found_in = _target_elsewhere(memory, records)
            if found_in:
                t, where = found_in
                values["train_peak"] = (f"**{t['measured']:.2f} GB**: target {t['goal']} "
                                        f"{'met' if t['met'] else 'not met'} (`{where}`, {BENCH_LABEL}; this page's "
                                        f"record, at {m['conditions']['token_budget']:,} tokens: "
                                        f"{med['peak_memory_bytes'] / 1e9:.2f} GB)")
    score = _by_scorer(m)
    if "medcore" in score:
        one = score["medcore"]
        first = f"first pass **{one['cold_seconds']:.1f} s**, second " if one.get("cold_seconds") else ""
        values["score_seconds"] = (f"{first}**{one['seconds']:.1f} s** for {one['questions']:,} questions"
                                   f"{target('seconds to score')}")
        if "harness-style" in score:
            values["score_ratio"] = (f"**{one['questions_per_s'] / score['harness-style']['questions_per_s']:.2f}x** "
                                     f"({one['questions_per_s']:,.0f} / {score['harness-style']['questions_per_s']:,.0f} "
                                     f"questions/s){target('scoring questions/s')}")
    lever_cells: dict[str, str] = {}
    repeat_from = None
    for rpath, rrec in records:  # in name order (a record named later replaces a lever measured earlier)
        rm = rrec["metrics"]
        rtrain = _by_recipe(rm)
        rsrc = _source(rpath, rm)
        scoring = [lv for lv in rm.get("levers", []) if _is_scoring(lv) and not lv.get("error")]
        for kind, cell in (("score_batch", "score_batch"), ("score_autocast", "score_autocast"),
                           ("score_cold", "score_cold")):
            shown = [_scoring_cell(lv) for lv in scoring if lv["lever"] == kind]
            if shown:
                lever_cells[cell] = "; ".join(shown) + rsrc
        prof = (rm.get("profile") or {}).get("train")
        if prof and "error" not in prof:
            values["profile_train"] = (f"**GPU busy {prof['gpu_busy_share']:.0%}** of {prof['wall_ms_per_step']:.0f} ms "
                                       f"per step; {prof['aten_calls_per_step']:,.0f} operator calls and "
                                       f"{prof['kernels_per_step']:,.0f} kernels per step" + rsrc)
        for lever in rm.get("levers", []):
            if lever.get("error") or "medcore" not in rtrain or _is_scoring(lever):
                continue
            text = _lever_text(lever, rtrain["medcore"], rm)
            key = f"budget_{lever['token_budget']}" if lever["lever"] == "budget" else lever["lever"]
            if key == "repeat":  # the first repeat of a record is the one shown (the notes say so)
                if repeat_from == rpath:
                    continue
                repeat_from = rpath
            if lever["lever"] == "budget":  # every warm-timed record's row at a budget, with setting and record
                if "warm_all_shapes" not in rm.get("conditions", {}):  # timed cold (before the per-shape warm-up)
                    continue
                setting = "; " + _flags({**rm.get("conditions", {}), **lever})
                lever_cells[key] = (lever_cells[key] + "; " if key in lever_cells else "") + text + setting + rsrc
            else:
                lever_cells[key] = text + rsrc
    added: dict[str, list[str]] = {}
    if more_records is None:
        more_records = [r for folder in more for r in bench_records(folder)]
    for rpath, rrec in more_records:
        rm = rrec["metrics"]
        base = _by_recipe(rm).get("medcore")
        for lever in rm.get("levers", []):
            if (base is None or lever.get("error") or _is_scoring(lever) or lever["lever"] in ("repeat", "budget")
                    or lever["lever"] in lever_cells):
                continue
            added.setdefault(lever["lever"], []).append(_lever_text(lever, base, rm, rate=True) + _source(rpath, rm))
    lever_cells.update({k: "; ".join(v) for k, v in added.items()})
    values.update({f"lever_{k}": v for k, v in lever_cells.items()})
    if m.get("matmul_tflops"):
        values["matmul"] = f"{m['matmul_tflops']:.0f} TFLOP/s"
    # the headline's source after each of its own cells (lever and profile cells, and a cell read from another
    # record, already name theirs)
    return {f"measured_{k}": (v + src if v != "not measured" and "(`" not in v else v) for k, v in values.items()}


def _lever_text(lever: dict, base: dict, m: dict, rate: bool = False) -> str:
    """One training lever in words: its change against the base row (whose rate is given with `rate`) and the
    record's repeats, and its peak memory."""
    gain = lever["real_tokens_per_s"] / base["real_tokens_per_s"] - 1
    against = f"the base row ({base['real_tokens_per_s']:,.0f})" if rate else "the base row"
    extra = (lever["peak_memory_bytes"] - base["peak_memory_bytes"]) / 1e9
    text = (f"**{gain:+.0%} real tokens/s** against {against}, peak {lever['peak_memory_bytes'] / 1e9:.2f} GB "
            f"({extra:+.2f} GB)")
    warm = _repeat_rate(m)
    return text + (f"; {lever['real_tokens_per_s'] / warm - 1:+.0%} against the repeats' mean" if warm else "")


def _scoring_cell(lever: dict) -> str:
    """One scoring lever in words: its passes' seconds for its questions."""
    first = f"first pass {lever['cold_seconds']:.2f} s, then " if lever.get("cold_seconds") else ""
    return f"{lever['variant']}: {first}**{lever['seconds']:.2f} s** for {lever['questions']:,} questions"
