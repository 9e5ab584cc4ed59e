"""`python -m medcore gpu-check`: every GPU entry point with its defaults, a few steps each, one pass/fail line each.

Run it before resolving any change to training, scoring, models, quantization or the benchmark. Each entry is a
separate process running the command a user types (so one crash cannot hide another), on the random Gemma-2B
shape unless ``--model`` says otherwise: ``medcore train`` for each PEFT method and base precision, with and
without gradient checkpointing and ``train.compile``; ``medcore study --parts main``; ``medcore.scale.distributed
train`` under ``accelerate launch`` with the shipped DDP and FSDP configs; ``medcore evaluate`` with its defaults;
a short ``medcore bench``. Notebook 03 calls ``workflows.finetune``, the function behind ``medcore train``.

The record (``--out``/``gpu-check-<device>``) holds each entry's command, status, seconds, the last lines of its
output when it failed, and the throughput and peak memory of the runs that write a training record.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medcore.bench.options import default_source
from medcore.config import add_config_arguments, config_from_args
from medcore.records import portable_paths, write_run_record

ROOT = Path(__file__).resolve().parents[2]  # the checkout: medcore/bench/<this file>
TRAIN_VARIANTS = {  # entry -> overrides on the paper profile (everything else at its defaults)
    "train nf4+dq lora (defaults)": [],
    "train nf4+dq rslora": ["lora.method=rslora"],
    "train nf4+dq dora": ["lora.method=dora"],
    "train fp4+dq lora": ["quant.precision=fp4"],
    "train int8 lora": ["quant.precision=int8"],
    "train bf16 lora": ["quant.precision=bf16"],
    "train no checkpointing": ["train.gradient_checkpointing=false"],
    "train lora_input_float32": ["train.lora_input_float32=true"],
    "train compile": ["train.compile=true"],
}


def entries(model: str, source: str, steps: int, work: Path, extra_sets: list[str] = (),
            profile: str = "paper") -> list[tuple[str, list[str]]]:
    """(name, argv) of every entry; paths of the scratch runs under `work`; `profile` and `extra_sets` go to every
    run that takes ``--profile``/``--set`` (a CPU rehearsal with a tiny model needs a longer ``data.max_length``)."""
    py = [sys.executable, "-m", "medcore"]
    data = [f"data.source={source}", f"data.train_source={source}", "data.train_split=validation",
            f"model.source={model}", f"train.max_steps={steps}", f"results_dir={work / 'results'}",
            "train.save_steps=1000000", "train.eval_steps=1000000", *extra_sets]
    sets = lambda extra: [x for kv in [*data, *extra] for x in ("--set", kv)]  # noqa: E731
    out = [(name, [*py, "train", "--profile", profile, *sets([f"name=check-{i}", *extra]),
                   "--output-dir", str(work / f"ckpt-{i}")]) for i, (name, extra) in enumerate(TRAIN_VARIANTS.items())]
    out.append(("study main", [*py, "study", "--profile", profile, "--parts", "main",
                               *sets(["name=check-study", "data.eval_limit=512"])]))
    for port, kind in enumerate(("ddp", "fsdp_qlora"), start=29517):  # own ports: the two may run at once (--jobs)
        out.append((f"distributed train {kind}", [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "medcore" / "scale" / "accelerate" / f"{kind}.yaml"), "--num_processes", "1",
            "--main_process_port", str(port), "-m",
            "medcore.scale.distributed", "train", "--profile", profile, *sets([f"name=check-{kind}"]),
            "--output-dir", str(work / f"ckpt-{kind}")]))
    out.append(("evaluate (defaults)", [*py, "evaluate", "--model", model, "--source", source,
                                        "--results-dir", str(work / "results"), "--run-id", "check-evaluate"]))
    out.append(("bench (short)", [*py, "bench", "--profile", profile, "--model", model, "--source", source, "--steps", "10",
                                  *[x for kv in [f"train.max_steps={max(steps, 20)}", *extra_sets] for x in ("--set", kv)],
                                  "--n-questions", "1024", "--out", str(work / "bench")]))
    return out


PAPER_TRAIN_QUESTIONS = 182_822  # MedMCQA's training split


def write_paper_sized_train(sources: list[Path], out: Path, n: int = PAPER_TRAIN_QUESTIONS) -> Path:
    """A training file as large as MedMCQA's training split, made by repeating the real questions of `sources`
    (MedMCQA release format) with fresh ids (``<id>-rep<k>``): for timing an epoch, not for accuracy."""
    rows = [line for path in sources for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with out.open("w", encoding="utf-8") as f:
        for i in range(n):
            record = json.loads(rows[i % len(rows)])
            record["id"] = f"{record.get('id', i)}-rep{i // len(rows)}"
            f.write(json.dumps(record) + "\n")
    return out


def paper_epoch(model: str, source: str, work: Path, resume: bool, timeout: float, env: dict,
                profile: str = "paper", extra_sets: list[str] = ()) -> list[dict]:
    """`medcore train --profile paper` (or `profile`) for one epoch of a paper-sized training file, then `medcore evaluate` of
    its adapter on the validation split; ``resume`` continues a run stopped by a time limit. `extra_sets`
    (``--set``) go to the training run, e.g. a smaller ``train.save_steps`` when time limits split the epoch:
    a resumed run repeats the steps after the last checkpoint."""
    dev = Path(source.removeprefix("local:"))
    folder = dev if dev.is_dir() else dev.parent
    train_file = work / "paper_train.json"
    if not train_file.is_file():
        sample = [folder / "train_sample.jsonl"] if (folder / "train_sample.jsonl").is_file() else []
        write_paper_sized_train([dev if dev.is_file() else folder / "dev.json", *sample], train_file)
    py = [sys.executable, "-m", "medcore"]
    sets = [f"model.source={model}", f"data.source={source}", f"data.train_source=local:{train_file}",
            "data.train_split=train", f"results_dir={work / 'results'}", "name=paper-epoch", *extra_sets]
    train_cmd = [*py, "train", "--profile", profile, *[x for kv in sets for x in ("--set", kv)],
                 "--output-dir", str(work / "ckpt"), *(["--resume"] if resume else [])]
    rows = [run_entry("paper epoch: train" + (" (resumed)" if resume else ""), train_cmd, timeout, env)]
    rows[-1].update(_train_figures(work, "paper-epoch"))
    if rows[-1]["passed"]:
        rows.append(run_entry("paper epoch: evaluate", [*py, "evaluate", "--model", model, "--source", source,
                                                        "--adapter", str(work / "ckpt" / "adapter"), "--results-dir",
                                                        str(work / "results"), "--run-id", "paper-epoch-eval"],
                              timeout, env))
    return rows


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


def _print(row: dict[str, Any]) -> None:
    rate = row.get("steady_real_tokens_per_s")
    print(f"[gpu-check] {row['status']:>4}  {row['entry']}  ({row['seconds']:.0f} s"
          + (f", {rate:,.0f} real tok/s steady, peak {row['peak_memory_bytes'] / 1e9:.1f} GB" if rate else "") + ")",
          flush=True)
    if not row["passed"]:
        print("\n".join("      " + x for x in row["output_tail"][-6:]), flush=True)


def run_entries(a: argparse.Namespace, source: str, work: Path, env: dict[str, str], save) -> list[dict[str, Any]]:
    """Run the entries `a.only` selects, `a.jobs` at a time, calling ``save(rows)`` after each (a run cut short
    keeps its rows); rows stay in entry order."""
    wanted = [x.strip() for x in a.only.split(",") if x.strip()]
    todo = [(name, cmd) for name, cmd in entries(a.model, source, a.steps, work, a.set, profile=a.profile)
            if not wanted or any(w in name for w in wanted)]
    done: dict[int, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        name, cmd = todo[i]
        row = run_entry(name, cmd, a.timeout, env)
        run_name = next((x.split("=", 1)[1] for x in cmd if x.startswith("name=")), None)
        if run_name:
            row.update(_train_figures(work, run_name))
        with lock:
            done[i] = row
            _print(row)
            save([done[k] for k in sorted(done)], final=False)

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for future in [pool.submit(one, i) for i in range(len(todo))]:
            future.result()
    return [done[k] for k in sorted(done)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medcore gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:gemma-2b")
    p.add_argument("--source", default=None, help="MedMCQA source (default: shared/medmcqa if present)")
    p.add_argument("--steps", type=int, default=8, help="training steps per entry")
    p.add_argument("--only", default="", help="comma list of entry names (substrings) to run")
    p.add_argument("--timeout", type=float, default=300, help="seconds per entry")
    p.add_argument("--jobs", type=int, default=1,
                   help="entries run at once on the one GPU (pass/fail only: their speeds then share the GPU)")
    add_config_arguments(p, profile="paper", what="for every run that takes --profile and --set")
    p.add_argument("--out", default="results/gpu-check")
    p.add_argument("--run-id", default=None)
    p.add_argument("--paper-epoch", action="store_true",
                   help="instead: one epoch of a paper-sized training file with the paper profile, then evaluate")
    p.add_argument("--work", default=None, help="scratch folder kept between calls (with --paper-epoch --resume)")
    p.add_argument("--resume", action="store_true", help="with --paper-epoch: continue its training run")
    a = p.parse_args(argv)
    source = a.source or default_source()
    # the settings every entry starts from (each adds its own --set): a bad --profile or --set fails here, in one line
    cfg = config_from_args(a, f"model.source={a.model}", f"data.source={source}")
    options = {k: v for k, v in vars(a).items() if k not in ("profile", "set")}
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    weights = not a.model.startswith("random:")
    run_id = a.run_id or ("paper-epoch" + ("-resumed" if a.resume else "") if a.paper_epoch else
                          "gpu-check-" + re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-"))

    def save(rows: list[dict[str, Any]], final: bool) -> Path:
        passed = sum(r["passed"] for r in rows)
        return write_run_record(a.out, run_id, config=portable_paths(cfg.to_dict()), metrics=portable_paths({
            "device": device, "model": a.model, "real_weights": weights, "entries": rows, "passed": passed,
            "total": len(rows), "all_passed": passed == len(rows), "complete": final,
            "concurrent_entries": 1 if a.paper_epoch else a.jobs}),
            extra={"real_weights": weights, "kind": "gpu-check", "options": portable_paths(options)}, overwrite=True)

    if a.paper_epoch:
        work = Path(a.work or tempfile.mkdtemp(prefix="medcore-paper-epoch-"))
        work.mkdir(parents=True, exist_ok=True)
        rows = paper_epoch(a.model, source, work, a.resume, a.timeout, env, profile=a.profile, extra_sets=a.set)
        for row in rows:
            _print(row)
    else:
        with tempfile.TemporaryDirectory(prefix="medcore-gpu-check-") as tmp:
            rows = run_entries(a, source, Path(tmp), env, save)
    passed = sum(r["passed"] for r in rows)
    print(f"[gpu-check] {passed} of {len(rows)} entries passed on {device}", flush=True)
    print(f"[gpu-check] record written to {save(rows, final=True)}")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
