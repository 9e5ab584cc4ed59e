"""What a bench record says: the GPU-path targets, each met or not from the measured rows, and the report
`python -m medcore bench` prints.

A target counts for the GPU path only under its conditions (CUDA, the Gemma-2B shape, NF4 with double
quantization); elsewhere it is computed and marked as measured under other conditions. The model, precision and
LoRA come from the run's configuration (a :class:`~medcore.config.RunConfig` or its ``config.json`` dict), what the
run met (device, load time) from the record's ``run``.
"""
from __future__ import annotations

import math
from typing import Any

from medcore.bench.options import SCORE_LEVER
from medcore.config import RunConfig

SCORE_QUESTIONS = 4183  # the MedMCQA validation split


def _config(cfg) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)


def targets(m: dict[str, Any], cfg) -> list[dict[str, Any]]:
    """The GPU-path targets, from the measured rows; `conditions_match`: CUDA, Gemma-2B shape, NF4 + DQ."""
    cfg = _config(cfg)
    tr = {r["recipe"]: r for r in m["training"]}
    med, base = tr["medcore"], tr["baseline"]
    one, harness = m["scoring"]
    match = (m["run"]["device_type"] == "cuda" and cfg.model.source == "random:gemma-2b"
             and cfg.quant.label == "nf4+dq")
    first = one["cold_seconds"] * SCORE_QUESTIONS / one["questions"]
    rows = [("training steady real tokens/s", ">= 25,000", med["real_tokens_per_s"], 25_000, ">", ""),
            ("training MFU (6N per real token)", ">= 38%", med["mfu"], 0.38, ">", "%"),
            ("training real tokens/s, medcore / tutorial", ">= 10x",
             med["real_tokens_per_s"] / base["real_tokens_per_s"], 10, ">", "x"),
            (f"scoring {SCORE_QUESTIONS:,} questions, first pass" +
             ("" if one["questions"] == SCORE_QUESTIONS else f" (projected from {one['questions']})"),
             "<= 3 s", first, 3, "<", "s"),
            ("scoring questions/s, medcore / harness-style", ">= 4x",
             one["questions_per_s"] / harness["questions_per_s"], 4, ">", "x")]
    for row in [med, *m.get("levers", [])]:
        if row.get("error") or "token_budget" not in row or not row.get("gradient_checkpointing"):
            continue
        limit = {4096: 5e9, 16384: 10e9}.get(row["token_budget"])
        if limit and not any(r[0].startswith(f"peak memory at {row['token_budget']:,}") for r in rows):
            rows.append((f"peak memory at {row['token_budget']:,} tokens/batch, checkpointing on",
                         f"<= {limit / 1e9:.0f} GB", row["peak_memory_bytes"] / 1e9, limit / 1e9, "<", "GB"))
    return [{"target": name, "goal": goal, "measured": value, "unit": unit, "conditions_match": match,
             "met": bool(value >= bound if op == ">" else value <= bound)} for name, goal, value, bound, op, unit in rows]


def figure(v: Any, unit: str = "") -> str:
    """A measured value as the report prints it (also the Performance page's targets): %, x, s, GB or a count."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return {"%": f"{100 * v:.1f}%", "x": f"{v:.2f}x", "s": f"{v:.2f} s", "GB": f"{v:.2f} GB"}.get(
        unit, f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")


def peer_lines(peers: list[dict[str, Any]]) -> list[str]:
    """The real peers' rows: status, the peer's own number and the ratio measured in the same run."""
    if not peers:
        return []
    lines = ["real peers (same run; ratio: medcore / peer tokens/s, peer / medcore scoring seconds):"]
    for r in peers:
        if r["status"] != "ok":
            tail = (r.get("error") or "").strip().splitlines()
            why = r.get("reason") or (tail[-1] if tail else "")
            lines.append(f"  {r['peer']}: {r['status']}: {why[:160]}")
        elif r["peer"] == "lm_eval":
            lines.append(f"  lm_eval: {r['questions']} questions in {r['scoring_wall_seconds']:.2f} s (medcore first "
                         f"pass {r['medcore_seconds']:.2f} s), ratio {figure(r['ratio'], 'x')}, letters agree "
                         f"{figure(r.get('agreement_with_medcore'), '%')}  [{r['code_path']}]")
        else:
            lines.append(f"  {r['peer']}: {figure(r['real_tokens_per_s'])} real tok/s steady (batch {r['batch_size']}, "
                         f"{figure(r['tokens_per_step'])} tok/step), wall {r['train_wall_seconds']:.1f} s, peak "
                         f"{figure(r['peak_memory_bytes'] / 1e9, 'GB')}, ratio {figure(r['ratio'], 'x')}  [{r['code_path']}]")
    return lines


def format_report(m: dict[str, Any], cfg) -> str:
    cfg, run = _config(cfg), m["run"]
    lines = [f"medcore bench: {cfg.model.source} ({'real' if m['real_weights'] else 'RANDOM'} weights), "
             f"{cfg.quant.label}, {cfg.lora.method} r={cfg.lora.r} {cfg.lora.targets}, {run['device_name']}; bf16 "
             f"matmul {m['matmul_tflops']:.0f} TFLOP/s; model load {run['load_seconds']:.1f} s", "", "training:"]
    for r in m["training"]:
        lines.append(f"  {r['recipe']:9s} {figure(r['real_tokens_per_s'])} real tok/s ({r['steps']} steps), "
                     f"MFU {figure(r['mfu'], '%')}, peak {figure(r['peak_memory_bytes'] / 1e9, 'GB')}  [{r['code_path']}]")
    med = m["training"][0]
    lines.append(f"  medcore over every step {figure(med['all_steps_real_tokens_per_s'])} real tok/s; train() wall "
                 f"{med['train_wall_seconds']:.1f} s; row from model load {m['medcore_wall_seconds']:.1f} s")
    lines.append("scoring:")
    for r in m["scoring"]:
        lines.append(f"  {r['scorer']}: first pass {r['cold_seconds']:.2f} s, second {r['seconds']:.2f} s, "
                     f"{figure(r['questions_per_s'])} q/s, peak {figure(r['peak_memory_bytes'] / 1e9, 'GB')}")
    for r in m.get("levers", []):
        value = f"failed: {r['error'][:100]}" if r.get("error") else (
            f"{figure(r['real_tokens_per_s'])} real tok/s, peak {figure(r['peak_memory_bytes'] / 1e9, 'GB')}"
            if "real_tokens_per_s" in r and r["lever"] != SCORE_LEVER else
            f"first pass {r.get('cold_seconds', float('nan')):.2f} s, {figure(r['questions_per_s'])} q/s")
        lines.append(f"  lever {r['variant']}: {value}")
    lines += peer_lines(m.get("peers", []))
    lines += ["", "targets (conditions: CUDA, random:gemma-2b, nf4+dq):"]
    lines += [f"  {t['target']}: {figure(t['measured'], t['unit'])} (goal {t['goal']}) "
              f"{'met' if t['met'] else 'NOT met'}{'' if t['conditions_match'] else ' [other conditions]'}"
              for t in m["targets"]]
    return "\n".join(lines)
