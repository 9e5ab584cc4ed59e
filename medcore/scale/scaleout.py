"""Scale-out on one host with several GPUs, measured against one GPU in the same call.

`python -m medcore scaleout --gpus 2 --parts throughput,fsdp,accuracy --results-dir results/scaleout` runs:

- throughput: QLoRA of `--model` (default ``random:gemma-2b``: RANDOM weights, for speed and memory only) for
  `--steps` optimizer steps on ONE GPU (one process, no launcher), then with DDP on `--gpus` GPUs
  (``accelerate launch`` with ``medcore/scale/accelerate/ddp.yaml``); same data, same per-device token budget
  (`--token-budget`, gradient checkpointing on, AdamW for both). Scaling efficiency =
  DDP real tokens/s / (gpus x one-GPU real tokens/s), both steady-state (the first steps left out).
- fsdp: the same QLoRA with FSDP (``fsdp_qlora.yaml``: 4-bit weights stored in bf16 and sharded): peak and resident
  memory per GPU against DDP's.
- accuracy: the real-weight study profile (embedded Gemma-3-270M, NF4 + DQ + LoRA) with DDP. The global batch is
  kept equal to the one-GPU study run (per-device ``max_batch_size`` and ``token_budget`` divided by `--gpus`), so
  the number of steps and the learning-rate schedule match; the adapter then scores the whole evaluation split
  (sharded), and the summary compares it with the one-GPU record (`--reference`): both intervals and McNemar.

Every run is a subprocess with its own time limit: one that fails leaves the others and their records. The
record ``scaleout-summary`` gathers what finished, with each command line, exit code and wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from medcore import records

CONFIG_DIR = Path(__file__).parent / "accelerate"
THROUGHPUT_SETTINGS = {"train.gradient_checkpointing": "true", "train.max_batch_size": "128",
                       "train.optimizer": "adamw_torch", "train.eval_steps": "1000000",
                       "train.save_steps": "1000000", "train.logging_steps": "5", "data.eval_limit": "64"}


@dataclass
class ScaleoutOptions:
    """What only the scale-out needs; the runs' settings come from the RunConfigs of ``--profile``/``--set`` and
    ``--accuracy-profile``/``--accuracy-set``."""
    gpus: int = 2
    parts: str = "throughput,fsdp,accuracy"
    summary_id: str = "scaleout-summary"
    model: str = "random:gemma-2b"  # model.source of the throughput and fsdp parts
    steps: int = 40
    token_budget: int = 4096
    reference: str | None = "results/study/study-fine-tuned"
    results_dir: str = "results/scaleout"
    run_limit: float = 300.0
    deadline: float | None = None

    @classmethod
    def from_args(cls, args) -> "ScaleoutOptions":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def config_path(name: str) -> Path:
    """A shipped accelerate config: ``ddp`` or ``fsdp_qlora``."""
    return CONFIG_DIR / f"{name}.yaml"


def launcher(gpus: int, mode: str) -> list[str]:
    """The command prefix: one plain process for one GPU, else ``accelerate launch`` with a shipped config."""
    if gpus == 1:
        return [sys.executable, "-m", "medcore.scale.distributed"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(mode)),
            "--num_processes", str(gpus), "-m", "medcore.scale.distributed"]


def _sets(settings: dict[str, Any]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def _parts(args) -> list[str]:
    parts = args.parts.split(",")
    unknown = set(parts) - {"throughput", "ddp", "fsdp", "accuracy"}
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}: choose from throughput, ddp, fsdp, accuracy")
    return parts


def plan(args) -> list[dict[str, Any]]:
    """The runs of the requested parts, in order: name, command, environment additions, time limit."""
    shape = args.model.split(":")[-1]
    common = {"model.source": args.model, "train.max_steps": args.steps, "train.token_budget": args.token_budget,
              **THROUGHPUT_SETTINGS, "results_dir": args.results_dir}
    runs = []
    user_sets = _sets(dict(s.split("=", 1) for s in args.set))
    parts = _parts(args)
    modes = [(1, "single", "ddp")] if "throughput" in parts else []  # (GPUs, role, accelerate config)
    if "throughput" in parts or "ddp" in parts:  # ddp: the DDP run alone (beside fsdp, for memory)
        modes.append((args.gpus, "ddp", "ddp"))
    if "fsdp" in parts:
        modes.append((args.gpus, "fsdp", "fsdp_qlora"))
    for gpus, role, config in modes:
        name = f"scaleout-{shape}-{role}{gpus if gpus > 1 or role == 'fsdp' else ''}"
        runs.append({"name": name, "role": role, "gpus": gpus, "limit": args.run_limit,
                     "env": {"CUDA_VISIBLE_DEVICES": "0"} if gpus == 1 and role != "fsdp" else {},
                     "cmd": launcher(gpus, config) + ["train", "--profile", args.profile]
                     + _sets({**common, "name": name}) + user_sets})
    if "accuracy" in parts:
        from medcore.config import config_from_args

        ref = config_from_args(args, prefix="accuracy-")
        name = f"scaleout-real-ddp{args.gpus}"
        settings = {"name": name, "results_dir": args.results_dir,
                    "train.max_batch_size": max(1, ref.train.max_batch_size // args.gpus),
                    "train.token_budget": ref.train.token_budget // args.gpus}
        extra = _sets(dict(s.split("=", 1) for s in args.accuracy_set))
        adapter = Path(args.results_dir).parent / "checkpoints" / name / "adapter"
        runs.append({"name": name, "role": "accuracy-train", "gpus": args.gpus, "limit": args.run_limit, "env": {},
                     "cmd": launcher(args.gpus, "ddp") + ["train", "--profile", args.accuracy_profile]
                     + extra + _sets(settings)})
        runs.append({"name": f"{name}-fine-tuned", "role": "accuracy-eval", "gpus": args.gpus,
                     "limit": args.run_limit, "env": {},
                     "cmd": launcher(args.gpus, "ddp") + ["evaluate", "--profile", args.accuracy_profile] + extra
                     + _sets({"name": name, "results_dir": args.results_dir})
                     + ["--adapter", str(adapter), "--run-id", f"{name}-fine-tuned"]})
    return runs


def check_arguments(args) -> None:
    """Refuse a bad argument here, in one line, before any run starts (a run would fail in its own log)."""
    from medcore.config import ConfigError

    if args.gpus < 2:
        raise ConfigError(f"--gpus {args.gpus}: must be at least 2 (the one-GPU run is part of the comparison)")
    for flag, value in (("--steps", args.steps), ("--token-budget", args.token_budget), ("--run-limit", args.run_limit)):
        if value <= 0:
            raise ConfigError(f"{flag} {value}: must be positive")
    configs(args)  # names a bad --model or --set


def configs(args) -> dict[str, Any]:
    """The validated RunConfig of each requested side: ``throughput`` (the throughput, ddp and fsdp parts, with the
    settings every one of their runs gets) and ``accuracy``."""
    from medcore.config import config_from_args

    parts, out = _parts(args), {}
    if {"throughput", "ddp", "fsdp"} & set(parts):
        common = {"model.source": args.model, "train.max_steps": args.steps, "train.token_budget": args.token_budget,
                  **THROUGHPUT_SETTINGS, "results_dir": args.results_dir}
        out["throughput"] = config_from_args(args, *[f"{k}={v}" for k, v in common.items()])
    if "accuracy" in parts:
        out["accuracy"] = config_from_args(args, prefix="accuracy-")
    return out


def execute(runs: list[dict[str, Any]], deadline: float | None, log_dir: Path) -> list[dict[str, Any]]:
    """Run each command under its limit (and the overall deadline); output goes to ``log_dir/<name>.log``."""
    t0, done = time.perf_counter(), []
    log_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        left = None if deadline is None else deadline - (time.perf_counter() - t0)
        if left is not None and left < 30:
            done.append({**run, "exit": None, "status": "not started (deadline)", "seconds": 0.0})
            print(f"deadline: not starting {run['name']}", flush=True)
            continue
        limit = min(run["limit"], left) if left is not None else run["limit"]
        env = {**os.environ, **run["env"]}
        start = time.perf_counter()
        print(f"[{start - t0:6.1f}s] {run['name']}: {' '.join(run['cmd'])}", flush=True)
        with open(log_dir / f"{run['name']}.log", "w") as log:
            try:
                code = subprocess.run(run["cmd"], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit).returncode
                status = "ok" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                code, status = None, f"stopped at its {limit:.0f} s limit"
        seconds = time.perf_counter() - start
        print(f"[{time.perf_counter() - t0:6.1f}s] {run['name']}: {status} in {seconds:.0f} s", flush=True)
        done.append({**run, "exit": code, "status": status, "seconds": seconds})
    return done


def _train_metrics(results_dir: Path, name: str) -> dict[str, Any] | None:
    path = results_dir / f"{name}-train" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(done: list[dict[str, Any]], results_dir: Path, reference: Path | None) -> dict[str, Any]:
    """Scaling efficiency, memory per GPU and the accuracy comparison from the runs' records."""
    rows = {}
    for run in done:
        if run["role"] in ("single", "ddp", "fsdp", "accuracy-train"):
            m = _train_metrics(results_dir, run["name"])
            if m:
                peaks = m.get("peak_memory_bytes_per_process") or [m.get("peak_memory_bytes")]
                resident = m.get("resident_memory_bytes_per_process") or [m.get("resident_memory_bytes")]
                rows[run["role"]] = {
                    "run": run["name"], "gpus": run["gpus"], "steps": m.get("global_step"),
                    "real_tokens_per_s": m.get("real_tokens_per_s"),
                    "steady_real_tokens_per_s": m.get("steady_real_tokens_per_s"),
                    "examples_per_s": m.get("examples_per_s"), "optimizer": m.get("optimizer"),
                    "peak_memory_gb_per_gpu": [p / 1e9 for p in peaks if p is not None],
                    "resident_memory_gb_per_gpu": [r / 1e9 for r in resident if r is not None],
                    "real_weights": m.get("real_weights")}
    summary: dict[str, Any] = {"runs": [{k: r[k] for k in ("name", "role", "gpus", "status", "exit", "seconds")}
                                        | {"command": " ".join(r["cmd"])} for r in done],
                               "training": rows}
    single, ddp = rows.get("single"), rows.get("ddp")
    if single and ddp:
        for key in ("real_tokens_per_s", "steady_real_tokens_per_s"):
            if single.get(key) and ddp.get(key):
                summary[f"speedup_{key}"] = ddp[key] / single[key]
                summary[f"scaling_efficiency_{key}"] = ddp[key] / (ddp["gpus"] * single[key])
    fine = results_dir / next((r["name"] for r in done if r["role"] == "accuracy-eval"), "-") / "metrics.json"
    if fine.is_file():
        m = json.loads(fine.read_text())
        acc = {"accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"]}
        if reference is not None and (reference / "metrics.json").is_file():
            from medcore.report.tables import paired_test

            r = json.loads((reference / "metrics.json").read_text())
            # matched by question id; b: only the one-GPU run right, c: only the DDP run right
            paired = paired_test(records.load_predictions(reference), records.load_predictions(fine.parent))
            test = {k: paired[k] for k in ("b", "c", "n", "pvalue")}
            acc.update(reference_run=str(reference), reference_accuracy=r["accuracy"],
                       reference_ci=[r["ci_low"], r["ci_high"]],
                       inside_reference_interval=bool(r["ci_low"] <= m["accuracy"] <= r["ci_high"]),
                       mcnemar=test)
        summary["accuracy"] = acc
    return summary


def main(argv: list[str] | None = None) -> int:
    from medcore.config import add_config_arguments

    p = argparse.ArgumentParser(prog="medcore scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ScaleoutOptions()
    p.add_argument("--gpus", type=int, default=d.gpus)
    p.add_argument("--parts", default=d.parts, help="throughput (one GPU and DDP), ddp (DDP "
                   "alone), fsdp, accuracy")
    p.add_argument("--summary-id", default=d.summary_id, help="run id of the summary record")
    p.add_argument("--model", default=d.model, help="throughput and fsdp parts")
    add_config_arguments(p, profile="study", what="the throughput and fsdp parts")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--token-budget", type=int, default=d.token_budget)
    add_config_arguments(p, profile="study", prefix="accuracy-", what="the accuracy part")
    p.add_argument("--reference", default=d.reference, help="the one-GPU record to compare")
    p.add_argument("--results-dir", default=d.results_dir)
    p.add_argument("--run-limit", type=float, default=d.run_limit, help="seconds for each run")
    p.add_argument("--deadline", type=float, default=None, help="seconds; start no run after this")
    args = p.parse_args(argv)
    check_arguments(args)
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if not torch.cuda.is_available():
        print("no CUDA device: the processes run on the CPU over gloo (a functional check; FSDP needs GPUs)")
    results_dir = Path(args.results_dir)
    done = execute(plan(args), args.deadline, results_dir.parent / "logs" / "scaleout")
    summary = summarize(done, results_dir, Path(args.reference) if args.reference else None)
    cfgs = configs(args)
    record = records.write_run_record(results_dir, args.summary_id, next(iter(cfgs.values())).to_dict(), summary,
                                      extra={"real_weights": "mixed", "note": f"throughput and fsdp: {args.model} "
                                             "(random weights: speed and memory only); accuracy: real weights",
                                             "options": asdict(ScaleoutOptions.from_args(args)),
                                             "configs": {k: c.to_dict() for k, c in cfgs.items()}},
                                      overwrite=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1, default=str))
    print(f"record: {record}")
    return 0 if all(r["status"] == "ok" for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
