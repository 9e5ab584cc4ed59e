"""Device probe: which torch settings let train.compile run under checkpointing with LoRA dropout; then a same-machine
A/B of the per-step sync change (parent 9eba699 vs f777eab), alternating A B A B."""
import json, os, subprocess, sys, time
from pathlib import Path
ROOT = Path(os.environ["ROOT"]); D = ROOT / "shared/medmcqa/dev.json"; O = Path("/tmp/o"); O.mkdir(exist_ok=True)
WRAP = ("import sys,runpy,torch\n{cfg}\nsys.argv=['medcore']+sys.argv[1:]\n"
        "runpy.run_module('medcore', run_name='__main__', alter_sys=True)")
def cmd(name, sets, cfg=""):
    base = ["--profile", "paper", "--set", "model.source=random:gemma-2b", "--set", f"data.source=local:{D}",
            "--set", f"data.train_source=local:{D}", "--set", "data.train_split=validation", "--set", f"name={name}",
            "--set", "results_dir=/tmp/o/results", "--set", "train.save_steps=1000000", "--set", "train.eval_steps=1000000"]
    for s in sets: base += ["--set", s]
    return [sys.executable, "-c", WRAP.format(cfg=cfg), "train", *base, "--output-dir", f"/tmp/ck/{name}"]
def start(name, sets, cfg="", src="src"):
    env = {**os.environ, "PYTHONPATH": f"/tmp/tf524:{ROOT}/site:{ROOT}/{src}",
           "MEDCORE_GIT_COMMIT": (ROOT / src / "COMMIT").read_text().strip()}
    log = open(O / f"{name}.log", "w")
    return name, time.time(), subprocess.Popen(cmd(name, sets, cfg), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT / src, env=env)
def result(name, t0, p, timeout):
    try: rc = p.wait(timeout=max(1, timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired: p.kill(); rc = "timeout"
    m = O / "results" / f"{name}-train" / "metrics.json"
    m = json.loads(m.read_text()) if m.is_file() else {}
    tail = [l for l in (O / f"{name}.log").read_text(errors="replace").replace("\r", "\n").splitlines() if "Error" in l][-2:]
    row = {"name": name, "rc": rc, "s": round(time.time() - t0), **{k: m.get(k) for k in ("global_step", "steady_real_tokens_per_s", "real_tokens_per_s", "wall_seconds", "peak_memory_bytes")}, "err": tail}
    print(json.dumps(row), flush=True); return row
rows = []
S = 40
probes = [("c-default", ["train.compile=true"], ""),
          ("c-dropout0", ["train.compile=true", "lora.dropout=0"], ""),
          ("c-fallback-random", ["train.compile=true"], "torch._inductor.config.fallback_random=True"),
          ("c-functionalize-rng", ["train.compile=true"], "torch._functorch.config.functionalize_rng_ops=True"),
          ("c-no-ckpt", ["train.compile=true", "train.gradient_checkpointing=false"], ""),
          ("eager", [], "")]
procs = [start(n, [f"train.max_steps={S}", *s], c) for n, s, c in probes]
for pr in procs: rows.append(result(*pr, timeout=int(os.environ.get("PT", 260))))
# A/B, sequential, alternating
E = os.environ.get("AB_EPOCHS", "2")
for k in range(2):
    for tag, src in (("A-parent", "src-9eba699"), ("B-nosync", "src-f777eab")):
        rows.append(result(*start(f"ab-{tag}-{k}", [f"train.epochs={E}"], "", src), timeout=150))
(O / "rows.json").write_text(json.dumps(rows, indent=1))
