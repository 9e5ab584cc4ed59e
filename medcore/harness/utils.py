"""Loading the original MedMCQA release for the ``medcore_medmcqa`` task; the prompt is the built-in task's."""
import json
import os
from pathlib import Path

import datasets

FIELDS = ("id", "question", "opa", "opb", "opc", "opd", "cop", "subject_name", "choice_type")
SPLIT_FILES = {"validation": "dev.json", "train": "train.json"}


def load_release(data_dir=None, **_metadata):
    """The release's ``dev.json`` (and ``train.json`` where present) from ``--metadata '{"data_dir": ...}'``
    or the ``MEDMCQA_DIR`` environment variable. Other metadata (the task version, model arguments) is ignored."""
    data_dir = data_dir or os.environ.get("MEDMCQA_DIR")
    if not data_dir:
        raise ValueError("medcore_medmcqa: say where the MedMCQA release is: --metadata "
                         "'{\"data_dir\": \"<folder with dev.json>\"}' or MEDMCQA_DIR=<folder>")
    folder = Path(data_dir).expanduser()
    if not (folder / SPLIT_FILES["validation"]).is_file():
        raise ValueError(f"medcore_medmcqa: data_dir={str(folder)!r} has no dev.json (the release's validation split)")
    splits = {}
    for split, name in SPLIT_FILES.items():
        if (folder / name).is_file():
            with open(folder / name, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            splits[split] = datasets.Dataset.from_list([{k: row.get(k) for k in FIELDS} for row in rows])
    return datasets.DatasetDict(splits)


def doc_to_text(doc) -> str:
    """Question: <question>\\nChoices:\\nA. <opa>\\nB. <opb>\\nC. <opc>\\nD. <opd>\\nAnswer:"""
    prompt = "Question: " + doc["question"] + "\nChoices:\n"
    for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd")):
        prompt += f"{letter}. {doc[key]}\n"
    return prompt + "Answer:"


def doc_to_target(doc) -> int:
    """The release numbers the right option 1-4; the harness wants its index 0-3."""
    cop = int(doc["cop"])
    if not 1 <= cop <= 4:
        raise ValueError(f"medcore_medmcqa: record {doc.get('id')!r} has cop={cop}; the release uses 1-4")
    return cop - 1
