"""`python -m medcore ask`: the scorer's letter distribution for questions typed in or read from JSON lines."""
import json

import numpy as np
import pytest

from medcore import evaluate
from medcore.__main__ import main
from medcore.config import RunConfig
from medcore.flows import ask, workflows

TINY = "random:tiny-gemma3"
OPTIONS = ["Adrenaline", "Atropine", "Insulin", "Heparin"]
QUESTION = "Which drug reverses organophosphate poisoning?"


@pytest.fixture(scope="module")
def loaded():
    cfg = RunConfig()
    cfg.model.source, cfg.quant.precision = TINY, "bf16"
    return workflows.load(cfg)


@pytest.mark.parametrize("options", [OPTIONS[:3], OPTIONS + ["Naloxone"], []])
def test_refuses_anything_but_four_options(options, capsys):
    with pytest.raises(ValueError, match=f"{len(options)} options given.*give exactly four, for the letters A-D"):
        ask.question_record(QUESTION, options)
    assert main(["ask", "--model", TINY, "--question", QUESTION, "--options", *options] if options
                else ["ask", "--model", TINY, "--question", QUESTION]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{len(options)} options given" in err


def test_distribution_is_the_scorers(loaded):
    model, tokenizer = loaded
    record = ask.question_record(QUESTION, OPTIONS, answer=1)
    got = ask.letter_distribution(model, tokenizer, record)
    row = evaluate.score_choices(model, tokenizer, [record], progress=False).iloc[0]
    assert got["logprobs"] == {x: row[f"logprob_{x}"] for x in "ABCD"}
    assert got["pick"] == "ABCD"[row["pred"]] and got["correct"] == bool(row["correct"])
    assert sum(got["probs"].values()) == pytest.approx(1, abs=1e-5)
    assert got["probs"][got["pick"]] == pytest.approx(row["prob"], abs=1e-6)
    logp = np.array(list(got["logprobs"].values()))  # the distribution is the four letters' softmax
    assert list(got["probs"].values()) == pytest.approx(list(np.exp(logp) / np.exp(logp).sum()), abs=1e-6)
    unkeyed = ask.letter_distribution(model, tokenizer, ask.question_record(QUESTION, OPTIONS))
    assert unkeyed["logprobs"] == got["logprobs"] and "answer" not in unkeyed


def test_reads_both_line_formats_and_names_a_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "options": OPTIONS, "answer": "b"}) + "\n\n"
                    + json.dumps({"question": "Q2", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 4}) + "\n")
    first, second = ask.read_questions(path)
    assert (first["options"], first["answer"]) == (OPTIONS, 1)
    assert (second["options"], second["answer"]) == (["w", "x", "y", "z"], 3)
    path.write_text(json.dumps({"question": "Q", "options": OPTIONS}) + "\n" + json.dumps({"question": "Q"}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl line 2: no options"):
        ask.read_questions(path)
    path.write_text(json.dumps({"question": "Q", "options": OPTIONS[:2]}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl line 1: 2 options given"):
        ask.read_questions(path)
    path.write_text(json.dumps({"question": "Q", "options": OPTIONS, "answer": 2}) + "\n")
    with pytest.raises(ValueError, match="line 1: answer 2 is not one of A, B, C, D"):
        ask.read_questions(path)


def test_command_prints_each_questions_distribution(tmp_path, loaded, capsys):
    model, tokenizer = loaded
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "options": OPTIONS, "answer": "B"}) + "\n"
                    + json.dumps({"question": "Which vitamin deficiency causes scurvy?",
                                  "options": ["A", "B12", "C", "D"]}) + "\n")
    assert main(["ask", "--model", TINY, "--file", str(path), "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = evaluate.score_choices(model, tokenizer, [dict(r, answer=r["answer"] or 0)
                                                         for r in ask.read_questions(path)], progress=False)
    assert [p["pick"] for p in printed] == ["ABCD"[i] for i in expected["pred"]]
    assert [p["logprobs"]["C"] for p in printed] == pytest.approx(expected["logprob_C"].tolist(), abs=1e-6)
    assert "answer" in printed[0] and "answer" not in printed[1]

    assert main(["ask", "--model", TINY, "--question", QUESTION, "--options", *OPTIONS]) == 0
    text = capsys.readouterr().out
    pick = printed[0]["pick"]
    assert f" *{pick}  " in text and f"pick {pick}" in text and "Atropine" in text
