"""The bench's real peers (medcore.bench.real_peers, peer_jobs) on the CPU with the tiny random Gemma: TRL's
SFTTrainer trains a few steps in its own subprocess and reports tokens/s; lm-evaluation-harness picks the letters
medcore's float32 scorer picks; a peer whose import fails is recorded as failed and the bench completes; unsloth
without a GPU is skipped with its reason; each peer's folders go in front of its PYTHONPATH."""
import json
import os

import pytest
import torch

from medcore import evaluate, models
from medcore.bench import command as bench
from medcore.bench import options, real_peers, report
from medcore.config import RunConfig
from tests.test_command import SETTINGS, write_source

TINY = "random:tiny-gemma3"


class Opts:
    steps, warmup, peer_timeout = 3, 1, 600


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("peers")


@pytest.fixture(scope="module")
def cfg():
    c = RunConfig()
    c.model.source, c.quant.precision, c.quant.compute_dtype = TINY, "bf16", "float32"
    return c


@pytest.fixture(scope="module")
def model_dir(cfg, folder):
    return real_peers.model_folder(cfg, models.load_tokenizer(TINY), folder)


def test_the_trl_peer_trains_the_tiny_model_and_reports_tokens_per_second(cfg, model_dir, folder, questions):
    med = {"examples": 12, "steps": 3, "real_tokens": 12 * 300, "real_tokens_per_s": 1000.0}
    spec = real_peers.training_spec(cfg, questions, model_dir, med, Opts, "cpu", folder)
    assert spec["batch_size"] == 4 and spec["lora"]["targets"] == "all-linear" and spec["lora"]["r"] == cfg.lora.r
    first = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    assert first["prompt"].endswith("\nAnswer:") and first["completion"] == " " + "ABCD"[questions[0]["answer"]]
    row = real_peers.with_ratio(real_peers.run_peer("trl", spec, folder, 600), med)
    assert row["status"] == "ok", row.get("error")
    assert row["code_path"].startswith("trl.SFTTrainer") and row["versions"]["trl"] == "1.16.0"
    assert row["steps"] == 4 and row["steady_steps"] == 3 and row["real_tokens"] > 0 and row["real_tokens_per_s"] > 0
    assert row["padding_free"] and row["completion_only_loss"] and row["base"].startswith("unquantized float32")
    assert row["examples"] == 4 * 4  # padding-free rows counted from their position ids
    assert row["ratio"] == pytest.approx(1000.0 / row["real_tokens_per_s"]) and row["peak_memory_bytes"] > 0


@pytest.mark.slow
def test_the_lm_eval_peer_picks_the_letters_medcore_picks(cfg, model_dir, folder, questions):
    """lm_eval's own HFLM and request building over a dev.json of the questions, float32, no adapter: its four
    log-likelihoods are medcore's letter log-probabilities (the harness never cuts a prompt; nor does 2048)."""
    spec = real_peers.scoring_spec(cfg, questions, model_dir, None, 8, "cpu", folder, dtype="float32")
    row = real_peers.run_peer("lm_eval", spec, folder, 600)
    assert row["status"] == "ok", row.get("error")
    model = models.load_model(f"local:{model_dir}", dtype=torch.float32)
    ours = evaluate.score_choices(model, models.load_tokenizer(TINY), questions, max_length=2048, progress=False)
    assert row["questions"] == len(questions) == 12 and row["requests"] == 48
    assert row["pred"] == ours["pred"].tolist()
    assert torch.tensor(row["loglik"]) == pytest.approx(torch.tensor(ours[[f"logprob_{x}" for x in "ABCD"]].to_numpy()),
                                                      abs=1e-4)
    med = {"cold_seconds": 2.0, "seconds": 1.0}
    row = real_peers.agreement(real_peers.with_ratio(row, med), ours["pred"].to_numpy())
    assert row["agreement_with_medcore"] == 1.0 and row["ratio"] == pytest.approx(row["scoring_wall_seconds"] / 2.0)


def test_a_peer_whose_import_fails_is_recorded_and_the_bench_completes(tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    (broken / "trl").mkdir(parents=True)
    (broken / "trl" / "__init__.py").write_text("raise ImportError('this trl wheel does not fit')\n")
    monkeypatch.setenv("MEDCORE_PEER_PATH_TRL", str(broken))
    data = tmp_path / "data"
    data.mkdir()
    cfg, opts = bench.parse_args(["--profile", "ci", *SETTINGS, "--peers", "trl,unsloth", "--source",
                                  write_source(data), "--out", str(tmp_path / "out")])
    metrics = bench.run_bench(cfg, opts)
    saved = json.loads((tmp_path / "out" / "bench-tiny-gemma-cpu" / "metrics.json").read_text())
    trl, unsloth = saved["peers"]
    assert trl["status"] == "failed" and "this trl wheel does not fit" in trl["error"] and trl["ratio"] is None
    assert unsloth["status"] == "skipped" and "CUDA" in unsloth["reason"]
    assert saved["complete"] and [r["recipe"] for r in saved["training"]] == ["medcore", "baseline"]
    text = report.format_report(metrics, cfg)
    assert "trl: failed: ImportError: this trl wheel does not fit" in text and "unsloth: skipped" in text


def test_peer_folders_go_in_front_of_the_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/base")
    monkeypatch.setenv("MEDCORE_PEER_PATH_UNSLOTH", "/wheels/unsloth")
    monkeypatch.setenv("MEDCORE_PEER_PATH", "/wheels/common")
    monkeypatch.delenv("MEDCORE_PEER_PYTHONPATH_UNSLOTH", raising=False)
    path = real_peers.peer_env("unsloth")["PYTHONPATH"].split(os.pathsep)
    assert path == ["/wheels/unsloth", "/wheels/common", "/base", str(real_peers.ROOT)]
    assert real_peers.peer_env("trl")["PYTHONPATH"].split(os.pathsep)[0] == "/wheels/common"
    monkeypatch.setenv("MEDCORE_PEER_PYTHONPATH_UNSLOTH", "/instead")
    assert "/base" not in real_peers.peer_env("unsloth")["PYTHONPATH"]
    assert real_peers.peer_env("lm_eval")["HF_HUB_OFFLINE"] == "1"


def test_the_peers_option():
    assert options.parse_args([])[1].peers == []  # today's bench unchanged
    _, opts = options.parse_args(["--peers", "lm_eval, trl,lm_eval", "--peer-timeout", "60"])
    assert opts.peers == ["lm_eval", "trl"] and opts.peer_timeout == 60
    with pytest.raises(SystemExit):
        options.parse_args(["--peers", "axolotl"])


def test_the_report_prints_each_peer_and_its_ratio():
    peers = [{"peer": "trl", "status": "ok", "real_tokens_per_s": 5000.0, "batch_size": 40, "tokens_per_step": 4000.0,
              "train_wall_seconds": 12.0, "peak_memory_bytes": 3e9, "ratio": 2.5, "code_path": "trl.SFTTrainer"},
             {"peer": "lm_eval", "status": "ok", "questions": 100, "scoring_wall_seconds": 9.0, "medcore_seconds": 1.5,
              "ratio": 6.0, "agreement_with_medcore": 0.99, "code_path": "lm_eval.simple_evaluate"},
             {"peer": "unsloth", "status": "skipped", "reason": "unsloth needs a CUDA GPU"}]
    text = "\n".join(report.peer_lines(peers))
    assert "trl: 5,000 real tok/s steady (batch 40" in text and "ratio 2.50x" in text
    assert "lm_eval: 100 questions in 9.00 s (medcore first pass 1.50 s), ratio 6.00x, letters agree 99.0%" in text
    assert "unsloth: skipped: unsloth needs a CUDA GPU" in text and report.peer_lines([]) == []


def test_unsloth_gets_a_copy_whose_embedding_covers_the_tokenizer(model_dir, tmp_path):
    """A base with fewer embedding rows than its tokenizer has ids (the random Gemma-2B shape with the Gemma 3
    tokenizer) is copied with zero rows added, the original rows unchanged; a base that fits is used as it is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medcore.bench.peer_jobs import vocab_fitted

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    short = tmp_path / "short"
    base.resize_token_embeddings(len(tok) - 40)
    base.save_pretrained(short)
    tok.save_pretrained(short)
    (tmp_path / "work").mkdir()
    fitted, rows = vocab_fitted(str(short), str(tmp_path / "work"))
    assert rows == {"from": len(tok) - 40, "to": len(tok)} and fitted != str(short)
    again = AutoModelForCausalLM.from_pretrained(fitted)
    emb = again.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) and torch.equal(emb[-40:], torch.zeros_like(emb[-40:]))
    assert torch.equal(emb[:-40], base.get_input_embeddings().weight)
    assert vocab_fitted(fitted, str(tmp_path / "work"))[0] == fitted
