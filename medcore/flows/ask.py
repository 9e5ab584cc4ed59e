"""`python -m medcore ask`: the letter distribution a model gives a question, exactly as the scorer computes it.

Each question goes through :func:`medcore.evaluate.score_choices` on its own (a one-record list), so what is
printed is what an evaluation run records for that question: the log-probabilities of `` A`` .. `` D`` at the
end of the harness prompt, their share normalized over the four letters, and the argmax as the pick. Questions
come from the command line (``--question`` and four ``--options``) or a JSON-lines file, one object a line:
``{"question": ..., "options": [four strings]}`` or the release's ``opa`` .. ``opd``, optionally with the key as
``"answer": "B"`` or the release's ``"cop": 2``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medcore.prompts import LETTERS

RELEASE_OPTIONS = ("opa", "opb", "opc", "opd")


def question_record(question: str, options: Iterable[str], answer: int | None = None, where: str = "") -> dict:
    """One record for the scorer; refuses anything but four non-empty options, naming them."""
    options = list(options)
    where = where or "ask"
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: the question is empty")
    if len(options) != 4:
        raise ValueError(f"{where}: {len(options)} options given ({', '.join(map(repr, options))}); "
                         "give exactly four, for the letters A-D")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise ValueError(f"{where}: every one of the four options must be a non-empty string, got {options!r}")
    return {"id": where, "question": question, "options": options, "answer": answer}


def _answer(obj: dict, where: str) -> int | None:
    if obj.get("answer") is not None:
        letter = str(obj["answer"]).strip().upper()
        if letter not in LETTERS:
            raise ValueError(f"{where}: answer {obj['answer']!r} is not one of A, B, C, D")
        return LETTERS.index(letter)
    if obj.get("cop") is not None:
        if obj["cop"] not in (1, 2, 3, 4):
            raise ValueError(f"{where}: cop {obj['cop']!r} is not 1-4 (the release numbers options from 1)")
        return obj["cop"] - 1
    return None


def read_questions(path: str | Path) -> list[dict]:
    """Records from a JSON-lines file (see the module doc); a bad line is refused with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--file {path}: no such file")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object with question and options")
        if "options" in obj:
            options = obj["options"]
        elif all(k in obj for k in RELEASE_OPTIONS):
            options = [obj[k] for k in RELEASE_OPTIONS]
        else:
            raise ValueError(f"{where}: no options: give \"options\": [four strings] or opa, opb, opc, opd")
        if not isinstance(options, list):
            raise ValueError(f"{where}: options must be a list of four strings, got {options!r}")
        records.append(question_record(obj.get("question"), options, _answer(obj, where), where))
    if not records:
        raise ValueError(f"--file {path}: no questions in it")
    return records


def letter_distribution(model, tokenizer, record: dict, max_length: int = 512) -> dict[str, Any]:
    """The scorer's row for one question, with the four letters' probabilities normalized as its ``prob`` is."""
    from medcore.evaluate import score_choices

    keyed = {**record, "answer": record["answer"] if record.get("answer") is not None else 0}  # the key changes no logit
    row = score_choices(model, tokenizer, [keyed], batch_size=1, max_length=max_length, progress=False).iloc[0]
    logp = np.array([row[f"logprob_{x}"] for x in LETTERS])
    prob = np.exp(logp - logp.max())
    prob /= prob.sum()
    out = {"id": record["id"], "question": record["question"], "options": record["options"],
           "pick": LETTERS[int(row["pred"])], "probs": dict(zip(LETTERS, prob.round(6).tolist())),
           "logprobs": dict(zip(LETTERS, logp.tolist())), "letter_mass": float(row["letter_mass"]),
           "tied": bool(row["tied"]), "truncated": bool(row["truncated"])}
    if record.get("answer") is not None:
        out["answer"] = LETTERS[record["answer"]]
        out["correct"] = out["pick"] == out["answer"]
    return out


def format_distribution(result: dict[str, Any]) -> str:
    lines = [f"Question: {result['question']}"]
    for letter, option in zip(LETTERS, result["options"]):
        mark = "*" if letter == result["pick"] else " "
        lines.append(f" {mark}{letter}  {result['probs'][letter]:6.1%}  log p {result['logprobs'][letter]:8.3f}  {option}")
    notes = [f"pick {result['pick']}"]
    if "answer" in result:
        notes.append(f"key {result['answer']} ({'right' if result['correct'] else 'wrong'})")
    notes.append(f"A-D hold {result['letter_mass']:.1%} of the next-token probability")
    if result["tied"]:
        notes.append("tied: the first of the tied letters is picked, as the harness does")
    if result["truncated"]:
        notes.append("the question was cut to fit --max-length")
    return "\n".join(lines + ["  " + "; ".join(notes)])


def ask(model_spec: str, records: list[dict], adapter: str | None = None, precision: str = "bf16",
        max_length: int = 512, as_json: bool = False) -> list[dict]:
    """The `ask` command: load the model once (as `evaluate` does), print each question's distribution."""
    from medcore.config import RunConfig
    from medcore.flows import workflows
    from medcore.lora import require_adapter

    require_adapter(adapter)
    cfg = RunConfig(name="ask")
    cfg.model.source, cfg.quant.precision, cfg.quant.double_quant = model_spec, precision, True
    if max_length < 16:
        raise ValueError(f"--max-length {max_length}: give at least 16 tokens (the prompt without its question)")
    cfg.validate()
    model, tokenizer = workflows.load(cfg, adapter=adapter)
    results = []
    for record in records:
        result = letter_distribution(model, tokenizer, record, max_length)
        print(json.dumps(result) if as_json else format_distribution(result) + "\n", flush=True)
        results.append(result)
    return results
