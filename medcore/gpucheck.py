"""`python -m medcore gpu-check`: every GPU entry point with its defaults, a few steps each, one pass/fail line each.

Run it before resolving any change to training, scoring, models, quantization or the benchmark. Each entry is a
separate process running the command a user types (so one crash cannot hide another), on the random Gemma-2B
shape unless ``--model`` says otherwise: ``medcore train`` for each PEFT method and base precision, with and
without gradient checkpointing and ``train.compile``; ``medcore study --parts main``; ``medcore.distributed
train`` under ``accelerate launch`` with the shipped DDP and FSDP configs; ``medcore evaluate`` with its defaults;
a short ``medcore bench``. Notebook 03 calls ``workflows.finetune``, the function behind ``medcore train``.

The record (``--out``/``gpu-check-<device>``) holds each entry's command, status, seconds, the last lines of its
output when it failed, and the throughput and peak memory of the runs that write a training record.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAIN_VARIANTS = {  # entry -> overrides on the paper profile (everything else at its defaults)
    "train nf4+dq lora (defaults)": [],
    "train nf4+dq rslora": ["lora.method=rslora"],
    "train nf4+dq dora": ["lora.method=dora"],
    "train fp4+dq lora": ["quant.precision=fp4"],
    "train int8 lora": ["quant.precision=int8"],
    "train bf16 lora": ["quant.precision=bf16"],
    "train no checkpointing": ["train.gradient_checkpointing=false"],
    "train compile": ["train.compile=true"],
    "train lora_input_float32": ["train.lora_input_float32=true"],
}


def entries(model: str, source: str, steps: int, work: Path, extra_sets: list[str] = ()) -> list[tuple[str, list[str]]]:
    """(name, argv) of every entry; paths of the scratch runs under `work`; `extra_sets` go to every run that takes
    ``--set`` (a CPU rehearsal with a tiny model needs a longer ``data.max_length``, say)."""
    py = [sys.executable, "-m", "medcore"]
    data = [f"data.source={source}", f"data.train_source={source}", "data.train_split=validation",
            f"model.source={model}", f"train.max_steps={steps}", f"results_dir={work / 'results'}",
            "train.save_steps=1000000", "train.eval_steps=1000000", *extra_sets]
    sets = lambda extra: [x for kv in [*data, *extra] for x in ("--set", kv)]  # noqa: E731
    out = [(name, [*py, "train", "--profile", "paper", *sets([f"name=check-{i}", *extra]),
                   "--output-dir", str(work / f"ckpt-{i}")]) for i, (name, extra) in enumerate(TRAIN_VARIANTS.items())]
    out.append(("study main", [*py, "study", "--profile", "paper", "--parts", "main",
                               *sets(["name=check-study", "data.eval_limit=512"])]))
    for kind in ("ddp", "fsdp_qlora"):
        out.append((f"distributed train {kind}", [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "medcore" / "accelerate" / f"{kind}.yaml"), "--num_processes", "1", "-m",
            "medcore.distributed", "train", "--profile", "paper", *sets([f"name=check-{kind}"]),
            "--output-dir", str(work / f"ckpt-{kind}")]))
    out.append(("evaluate (defaults)", [*py, "evaluate", "--model", model, "--source", source,
                                        "--results-dir", str(work / "results"), "--run-id", "check-evaluate"]))
    out.append(("bench (short)", [*py, "bench", "--model", model, "--source", source, "--steps", "10",
                                  "--set", f"train.max_steps={max(steps, 20)}", "--n-questions", "1024",
                                  "--out", str(work / "bench")]))
    return out


def _train_figures(work: Path, name: str) -> dict[str, Any]:
    path = work / "results" / f"{name}-train" / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in ("global_step", "steady_real_tokens_per_s", "real_tokens_per_s", "wall_seconds",
                                  "peak_memory_bytes")}


def run_entry(name: str, argv: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    # a session of its own, so that a timeout also ends the workers a launcher started
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        tail = proc.communicate(timeout=timeout)[0]
        status = "pass" if proc.returncode == 0 else f"fail (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        tail, status = proc.communicate()[0], f"fail (timed out after {timeout:.0f} s)"
    seconds = time.perf_counter() - start
    text = tail if isinstance(tail, str) else tail.decode(errors="replace")
    lines = [x for x in text.replace("\r", "\n").splitlines() if x.strip() and "%|" not in x]  # no progress bars
    errors = [x for x in lines if "Error" in x or "error:" in x][-5:]  # the cause, above a launcher's summary
    return {"entry": name, "command": " ".join(argv[1:]), "status": status, "passed": status == "pass",
            "seconds": seconds, "output_tail": (errors + lines[-15:]) if status != "pass" else lines[-3:]}


def main(argv: list[str] | None = None) -> int:
    from medcore.bench import default_source

    p = argparse.ArgumentParser(prog="medcore gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:gemma-2b")
    p.add_argument("--source", default=None, help="MedMCQA source (default: shared/medmcqa if present)")
    p.add_argument("--steps", type=int, default=8, help="training steps per entry")
    p.add_argument("--only", default="", help="comma list of entry names (substrings) to run")
    p.add_argument("--timeout", type=float, default=300, help="seconds per entry")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run that takes --set")
    p.add_argument("--out", default="results/gpu-check")
    p.add_argument("--run-id", default=None)
    a = p.parse_args(argv)
    import torch

    from medcore.results import write_run_record

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    source = a.source or default_source()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medcore-gpu-check-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        todo = entries(a.model, source, a.steps, work, a.set)
        wanted = [x.strip() for x in a.only.split(",") if x.strip()]
        todo = [(n, cmd) for n, cmd in todo if not wanted or any(w in n for w in wanted)]
        for i, (name, cmd) in enumerate(todo):
            row = run_entry(name, cmd, a.timeout, env)
            run_name = next((x.split("=", 1)[1] for x in cmd if x.startswith("name=")), None)
            if run_name:
                row.update(_train_figures(work, run_name))
            rows.append(row)
            rate = row.get("steady_real_tokens_per_s")
            print(f"[gpu-check] {row['status']:>4}  {name}  ({row['seconds']:.0f} s"
                  + (f", {rate:,.0f} real tok/s steady, peak {row['peak_memory_bytes'] / 1e9:.1f} GB" if rate else "")
                  + ")", flush=True)
            if not row["passed"]:
                print("\n".join("      " + x for x in row["output_tail"][-6:]), flush=True)
    passed = sum(r["passed"] for r in rows)
    print(f"[gpu-check] {passed} of {len(rows)} entries passed on {device}", flush=True)
    import re

    run_id = a.run_id or "gpu-check-" + re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    record = write_run_record(a.out, run_id, config=vars(a), metrics={
        "device": device, "model": a.model, "real_weights": not a.model.startswith("random:"), "entries": rows,
        "passed": passed, "total": len(rows), "all_passed": passed == len(rows)},
        extra={"real_weights": not a.model.startswith("random:"), "kind": "gpu-check"}, overwrite=True)
    print(f"[gpu-check] record written to {record}")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
