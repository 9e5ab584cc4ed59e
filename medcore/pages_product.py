"""The Performance page's first part: the benchmark of the product path (``results/bench-product/``: the rows are
``medcore.train.train`` and ``medcore.evaluate.score_choices`` with a user's settings) and the GPU check
(``results/gpu-check/``: every GPU entry point with its defaults). Called by :func:`medcore.pages.write_generated`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from medcore import analysis as an
from medcore.page_parts import note as _note
from medcore.pages_bench import BENCH_LABEL


def _records(folder: Path) -> list[tuple[Path, dict]]:
    from medcore.results import load_run

    if not folder.is_dir():
        return []
    runs = [(p, load_run(p)) for p in sorted(folder.iterdir()) if (p / "metrics.json").is_file()]
    return sorted(runs, key=lambda r: (r[1]["metrics"].get("headline", False), r[0].name))


def _gb(x) -> str:
    return "—" if x is None else f"{x / 1e9:.2f} GB"


def product_bench_markdown(folder: Path) -> str:
    """Headline rows and targets of the product-path record marked ``headline`` (else the last by name), then
    the levers of every record."""
    runs = _records(folder)
    if not runs:
        return _note(f"No product-path benchmark record yet under `results/{folder.name}/`: run `python -m medcore "
                     "bench` on a GPU and commit its record.")
    path, rec = runs[-1]
    m, env, cfg = rec["metrics"], rec["environment"] or {}, rec["config"] or {}
    c = m["conditions"]
    med, base = m["training"]
    one, harness = m["scoring"]
    t = cfg.get("train", {})
    lines = [f"Record `{path.name}` (**{BENCH_LABEL}**: speed and memory only): "
             f"`{c['model']}`, {c['precision']}, {c['lora_method']} r={c['lora_r']} {c['lora_targets']}, on "
             f"{m['device']}; torch {c.get('torch')}, transformers {c.get('transformers')}, bitsandbytes "
             f"{c.get('bitsandbytes')}, git commit `{str(env.get('git_commit'))[:14]}`. Its configuration "
             f"(`config.json`: the `{cfg.get('name')}` profile at that commit): {t.get('token_budget')} tokens per batch (at most "
             f"{t.get('max_batch_size')} rows), checkpointing {'on' if t.get('gradient_checkpointing') else 'off'}, "
             f"compile {'on' if t.get('compile') else 'off'}, optimizer {med.get('optimizer')}.\n",
             an.markdown_table(pd.DataFrame([
                 {"row": "training, medcore", "code": f"`{med['code_path']}`",
                  "real tokens/s": f"{med['real_tokens_per_s']:,.0f}", "MFU": f"{100 * med['mfu']:.1f} %",
                  "peak": _gb(med["peak_memory_bytes"]), "steps": med["steps"]},
                 {"row": "training, tutorial loop", "code": "padded batches, the model's own loss",
                  "real tokens/s": f"{base['real_tokens_per_s']:,.0f}", "MFU": f"{100 * base['mfu']:.1f} %",
                  "peak": _gb(base["peak_memory_bytes"]), "steps": base["steps"]}])),
             f"\nmedcore's rate is the steady one (after the first {med['steps'] - med['steady_steps']} steps); over "
             f"every step it was {med['all_steps_real_tokens_per_s']:,.0f} real tokens/s. `train()` took "
             f"{med['train_wall_seconds']:.0f} s for {med['steps']} steps ({med['examples']:,} questions), "
             f"{m['medcore_wall_seconds']:.0f} s from the model's load.\n",
             an.markdown_table(pd.DataFrame([
                 {"scorer": f"`{r['code_path']}`", "questions": r["questions"],
                  "first pass": f"{r['cold_seconds']:.2f} s", "second pass": f"{r['seconds']:.2f} s",
                  "questions/s": f"{r['questions_per_s']:,.0f}"} for r in (one, harness)])),
             f"\nScoring at batch {c['score_batch_size']}, bf16 autocast {'on' if c['score_autocast'] else 'off'} "
             "(the defaults of `medcore evaluate` on a GPU).\n",
             an.markdown_table(pd.DataFrame([
                 {"target": x["target"], "goal": x["goal"], "measured": _measured(x), "met": "yes" if x["met"] else "no"}
                 for x in m["targets"]]))]
    levers = [(p.name, r) for p, rr in runs for r in rr["metrics"].get("levers", [])]
    if levers:
        lines += ["\nLevers: the medcore training row (or the scoring pass) rerun with one setting changed, from the "
                  "same adapter weights.\n",
                  an.markdown_table(pd.DataFrame([
                      {"record": f"`{name}`", "variant": r["variant"],
                       "result": f"failed: {r['error'][:80]}" if r.get("error") else (
                           f"{r['questions_per_s']:,.0f} questions/s, first pass {r['cold_seconds']:.2f} s"
                           if r["lever"] == "score_batch" else f"{r['real_tokens_per_s']:,.0f} real tokens/s"),
                       "peak": _gb(r.get("peak_memory_bytes"))} for name, r in levers]))]
    return "\n".join(lines) + "\n"


def _measured(target: dict) -> str:
    v, unit = target["measured"], target["unit"]
    return {"%": f"{100 * v:.1f} %", "x": f"{v:.2f}x", "s": f"{v:.2f} s", "GB": f"{v:.2f} GB"}.get(unit, f"{v:,.0f}")


def gpu_check_markdown(folder: Path) -> str:
    """One row per entry of every GPU-check record (a check split over calls by a time limit is several records)."""
    runs = _records(folder)
    if not runs:
        return _note(f"No GPU check record yet under `results/{folder.name}/`: run `python -m medcore gpu-check` on a "
                     "GPU and commit its record.")
    rows, heads = [], []
    for path, rec in runs:
        m, env = rec["metrics"], rec["environment"] or {}
        heads.append(f"`{path.name}`: {m['passed']} of {m['total']} passed on {m['device']} (git commit "
                     f"`{str(env.get('git_commit'))[:14]}`{'' if m.get('complete', True) else '; stopped by a time limit'})")
        rows += [{"record": f"`{path.name}`", "entry": e["entry"], "result": "pass" if e["passed"] else e["status"],
                  "seconds": f"{e['seconds']:.0f}", "real tokens/s": f"{e['steady_real_tokens_per_s']:,.0f}"
                  if e.get("steady_real_tokens_per_s") else "—", "peak": _gb(e.get("peak_memory_bytes"))}
                 for e in m["entries"]]
    failed = [r for r in rows if r["result"] != "pass"]
    return "\n".join([
        f"`{runs[-1][1]['metrics']['model']}` (**random weights**). Each entry is the command a user types, with its "
        "defaults and 8 training steps; a rate over so few steps includes their first, slow steps, so read the "
        "benchmark above for speed. Records: " + "; ".join(heads) + ".\n", an.markdown_table(pd.DataFrame(rows)),
        *([_note("Failing: " + "; ".join(f"{r['entry']} ({r['result']})" for r in failed) + ". See the record's "
                 "`output_tail` for the error.")] if failed else [])]) + "\n"
