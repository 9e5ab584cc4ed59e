"""The GPU acceptance command on the CPU: which entry points it covers, one entry end to end with a tiny model, a
failing or hanging entry reported (and its workers ended), and the paper-sized training file."""
import json
import sys
import time

from medcore.bench import gpucheck
from medcore.config import RunConfig

TINY_SETS = ["data.max_length=2048", "train.token_budget=4096", "train.max_batch_size=16", "train.optimizer=adamw_torch",
             "data.train_size=64", "data.eval_limit=64"]


def test_entries_cover_every_gpu_entry_point(tmp_path):
    names = [name for name, _ in gpucheck.entries("random:gemma-2b", "local:dev.json", 8, tmp_path)]
    for wanted in ("train nf4+dq lora (defaults)", "train nf4+dq rslora", "train nf4+dq dora", "train fp4+dq lora",
                   "train int8 lora", "train bf16 lora", "train no checkpointing", "train compile", "study main",
                   "distributed train ddp", "distributed train fsdp_qlora", "evaluate (defaults)", "bench (short)"):
        assert wanted in names
    commands = dict(gpucheck.entries("random:gemma-2b", "local:dev.json", 8, tmp_path, ["eval.batch_size=8"]))
    ddp = commands["distributed train ddp"]
    assert "medcore.scale.distributed" in ddp and any(x.endswith("accelerate/ddp.yaml") for x in ddp)
    assert "eval.batch_size=8" in commands["train compile"] and "train.compile=true" in commands["train compile"]
    assert "--set" not in commands["evaluate (defaults)"]  # evaluate runs with its own defaults
    other = dict(gpucheck.entries("random:gemma-2b", "local:dev.json", 8, tmp_path, profile="ci"))
    assert all(cmd[cmd.index("--profile") + 1] == "ci" for name, cmd in other.items() if "--profile" in cmd)
    assert sum("--profile" in cmd for cmd in other.values()) == len(other) - 1  # all but evaluate (defaults)


def test_one_training_entry_end_to_end_writes_a_record(tmp_path, medmcqa_dir):
    argv = ["--model", "random:tiny-gemma", "--steps", "2", "--only", "train bf16", "--source",
            f"local:{medmcqa_dir / 'dev.json'}", "--out", str(tmp_path), "--run-id", "check"]
    for kv in TINY_SETS:
        argv += ["--set", kv]
    assert gpucheck.main(argv) == 0
    m = json.loads((tmp_path / "check" / "metrics.json").read_text())
    assert m["all_passed"] and m["total"] == 1 and m["real_weights"] is False
    entry = m["entries"][0]
    assert entry["entry"] == "train bf16 lora" and entry["global_step"] == 2 and entry["steady_real_tokens_per_s"] > 0
    # config.json is the RunConfig every entry starts from; the command's own options beside it
    cfg = RunConfig.from_dict(json.loads((tmp_path / "check" / "config.json").read_text()))
    assert cfg.name == "paper" and cfg.model.source == "random:tiny-gemma" and cfg.data.max_length == 2048
    env = json.loads((tmp_path / "check" / "environment.json").read_text())
    assert env["options"]["steps"] == 2 and "set" not in env["options"]


def test_failing_and_hanging_entries_are_reported(tmp_path):
    failed = gpucheck.run_entry("boom", [sys.executable, "-c", "raise ValueError('bad setting x')"], 30, {})
    assert not failed["passed"] and failed["status"] == "fail (exit 1)"
    assert any("ValueError: bad setting x" in line for line in failed["output_tail"])
    marker = tmp_path / "child-still-running"
    # a launcher whose worker outlives it: the timeout must end both
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    start = time.perf_counter()
    hung = gpucheck.run_entry("hang", [sys.executable, "-c", parent], 1, {})
    assert hung["status"] == "fail (timed out after 1 s)" and time.perf_counter() - start < 10
    time.sleep(4)
    assert not marker.exists()


def test_paper_sized_training_file_repeats_real_questions_with_fresh_ids(tmp_path, medmcqa_dir):
    out = gpucheck.write_paper_sized_train([medmcqa_dir / "dev.json"], tmp_path / "train.json", n=9000)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    dev = [json.loads(line) for line in (medmcqa_dir / "dev.json").read_text().splitlines() if line.strip()]
    assert len(rows) == 9000 and len({r["id"] for r in rows}) == 9000
    assert rows[len(dev)]["question"] == dev[0]["question"] and rows[len(dev)]["id"] == f"{dev[0]['id']}-rep1"
    from medcore.data import load_medmcqa

    assert len(load_medmcqa(f"local:{out}", "train")) == 9000  # a valid MedMCQA file


def test_paper_epoch_passes_the_sets_to_training_and_resumes_on_request(tmp_path, medmcqa_dir, monkeypatch):
    ran = []
    monkeypatch.setattr(gpucheck, "write_paper_sized_train", lambda sources, out: out.write_text("") or out)
    monkeypatch.setattr(gpucheck, "run_entry", lambda name, argv, timeout, env: ran.append((name, argv)) or
                        {"entry": name, "passed": name.endswith("evaluate"), "seconds": 1.0})
    gpucheck.paper_epoch("random:tiny-gemma", f"local:{medmcqa_dir / 'dev.json'}", tmp_path, resume=True,
                         timeout=10, env={}, extra_sets=["train.save_steps=50"])
    (name, argv), = ran  # training did not pass, so no evaluation
    assert name == "paper epoch: train (resumed)" and argv[-1] == "--resume"
    assert "train.save_steps=50" in argv and f"data.train_source=local:{tmp_path / 'paper_train.json'}" in argv


def test_jobs_run_entries_at_once_and_keep_their_order(tmp_path, monkeypatch):
    sleep = [sys.executable, "-c", "import time; time.sleep(3)"]
    fail = [sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(2)"]
    monkeypatch.setattr(gpucheck, "entries", lambda *a, **k: [("slow", sleep), ("fails", fail), ("slow too", sleep)])
    start = time.perf_counter()
    assert gpucheck.main(["--jobs", "3", "--out", str(tmp_path), "--run-id", "at-once",
                          "--source", "local:dev.json"]) == 1
    assert time.perf_counter() - start < 8  # one after another would take 7 s and more
    m = json.loads((tmp_path / "at-once" / "metrics.json").read_text())
    assert [e["entry"] for e in m["entries"]] == ["slow", "fails", "slow too"]
    assert [e["passed"] for e in m["entries"]] == [True, False, True]
    assert m["concurrent_entries"] == 3 and m["complete"] and not m["all_passed"]


def test_distributed_entries_take_ports_of_their_own(tmp_path):
    commands = dict(gpucheck.entries("random:gemma-2b", "local:dev.json", 8, tmp_path))
    ports = {cmd[cmd.index("--main_process_port") + 1] for name, cmd in commands.items() if "distributed" in name}
    assert len(ports) == 2
