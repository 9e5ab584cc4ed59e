"""The Performance page's record-driven parts beside the benchmark (called by :func:`medcore.pages.write_generated`;
the benchmark's own parts are in :mod:`medcore.pages_bench`):

- ``performance.md`` (after the benchmark) - the measured model size per precision (``results/scale/``);
- ``scale_gpu.md`` - the results table per precision at the Gemma-2B shape (``results/scale-h200/``, random
  weights): size, training and scoring speed and memory;
- ``scaleout.md`` - one GPU against DDP (random weights) and the real-weight DDP fine-tune against the one-GPU
  record (``results/scaleout/``), FSDP from ``results/scaleout-fsdp/`` when it exists.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from medcore import analysis as an
from medcore.page_parts import note as _note, save_figure as _save
from medcore.pages_bench import BENCH_LABEL
from medcore.results import load_run, run_dirs

# ---- the model size per precision (results/scale) -------------------------------------------------------------

def scale_markdown(scale_dir: Path) -> str:
    """The measured footprint per precision of every ``results/scale/*-footprint`` record (model size row)."""
    parts = []
    for run in sorted(scale_dir.glob("*-footprint")) if scale_dir.is_dir() else []:
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
                  f"Measured on {_machine(env)} "
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


def scale_gpu_rows(scale_dir: Path, prefix: str, foot: dict | None = None) -> pd.DataFrame:
    """One row per precision of the ``<prefix>-footprint``, ``-<p>-cost`` and ``-<p>-train`` records (NaN where a
    record is missing): bytes in memory and on disk, training rates and memory, scoring rate and latency."""
    foot = _load(scale_dir / f"{prefix}-footprint") if foot is None else foot
    sizes = {f["precision"]: f for f in (foot["metrics"].get("footprint", []) if foot else [])}
    rows = []
    for precision, label in SCALE_PRECISIONS:
        name = f"{prefix}-{precision.replace('+', '-')}"
        cost = (_load(scale_dir / f"{name}-cost") or {}).get("metrics", {}).get("cost") or {}
        train = _load(scale_dir / f"{name}-train")
        t = train["metrics"] if train else {}
        size = sizes.get(precision, {})
        rows.append({
            "label": label, "memory_bytes": size.get("total_bytes"),
            "disk_bytes": size.get("disk_bytes"), "embedding_bytes": size.get("embedding_bytes"),
            "steady_tokens_per_s": t.get("steady_real_tokens_per_s"),
            "peak_bytes": t.get("peak_memory_bytes"), "resident_bytes": t.get("resident_memory_bytes"),
            "adapter_bytes": 4 * t["parameters"]["trainable"] if t.get("parameters") else None,  # peft: fp32 LoRA
            "steps": t.get("global_step"), "optimizer": t.get("optimizer"),
            "train_config": (train or {}).get("config", {}).get("train", {}),
            "best_qps": cost.get("best_qps"), "best_batch": cost.get("best_batch_size"),
            "latency_ms": cost.get("latency_ms_median"),
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
        foot_rec = load_run(foot)
        df = scale_gpu_rows(scale_dir, prefix, foot_rec)
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
        foot_cfg = foot_rec["config"] or {}
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
            emb = df["embedding_bytes"].dropna()
            emb_text = f" ({emb.iloc[0] / 1e9:.2f} GB of bf16 embedding for this shape)" if len(emb) else ""
            parts.append("\n" + _note(
                "The training rows ran in one process after the scoring and footprint parts; the memory allocated "
                f"when the first training step began exceeded the model plus adapter by about {each} "
                "(memory of earlier runs not released), so the raw peak overstates; 'peak above resident' (the "
                "step's own activations, gradients and optimizer state) is unaffected. The cause, found after the "
                "run: with an 8-bit bitsandbytes optimizer the Trainer registers each model's embedding with "
                f"bitsandbytes' process-wide GlobalOptimManager, which keeps it{emb_text} after "
                "the model is deleted. medcore now drops that reference when training ends "
                "(`train.release_optimizer_overrides`); not yet re-measured on the GPU. The "
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
    for path in run_dirs(folder):
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


def _scored_with_ties(scaleout_dir: Path) -> bool:
    """Whether a scored record of the folder lacks exact scoring's 1/k ``credit`` column."""
    from medcore.analysis import scored_exactly
    from medcore.results import load_predictions

    scored = [p for p in scaleout_dir.glob("*-fine-tuned") if (p / "predictions.parquet").is_file()]
    return any(not scored_exactly(load_predictions(p)) for p in scored)


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
    if acc and _scored_with_ties(scaleout_dir):
        parts.append(_note("**Scored with ties.** These records predate exact scoring: their bf16 letter scores "
                           "often tied, and every tie went to the earliest tied letter (A most often), so both "
                           "accuracies are flattered and their difference is not a clean measurement."))
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
        failed = [(p.parent, r) for p, rec_ in [(path, rec), *fsdp_found] for r in rec_["metrics"].get("runs", [])
                  if r.get("role") == "fsdp"]
        text = "FSDP + QLoRA: not measured."
        for folder, r in failed:  # each run's log lies beside its own summary record
            error = _error_line(folder / "logs" / f"{r['name']}.log")
            code = f" (exit {r['exit']})" if r.get("exit") is not None else ""
            said = f" with `{error}`" if error else ""
            text += (f" The run `{r['name']}` ({r.get('gpus')} GPUs) ended **{r.get('status')}**{code}{said}; "
                     f"its output: `results/{folder.name}/logs/{r['name']}.log`.")
        parts.append(_note(text))
    return "\n".join(parts)
