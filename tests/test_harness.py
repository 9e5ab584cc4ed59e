"""The shipped lm-evaluation-harness task scores as medcore's scorer does (20 real validation questions)."""
import importlib.util
import json

import pytest
import torch

from medcore import data, evaluate, lora, models, prompts
from medcore.config import LoraConfig
from medcore.harness import TASK_DIR, TASK_NAME

TINY = "random:tiny-gemma3"


def _task_utils():
    spec = importlib.util.spec_from_file_location("medcore_harness_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _release_folder(medmcqa_dir, tmp_path, n=20):
    """The first `n` lines of the release's dev.json, in a folder of their own."""
    folder = tmp_path / "release"
    folder.mkdir()
    lines = (medmcqa_dir / "dev.json").read_text().splitlines()[:n]
    (folder / "dev.json").write_text("\n".join(lines) + "\n")
    return folder


def test_task_prompt_and_target_match_medcore(medmcqa_dir, tmp_path):
    utils = _task_utils()
    folder = _release_folder(medmcqa_dir, tmp_path)
    docs = utils.load_release(data_dir=str(folder), version=1.0)["validation"]
    ours = data.load_medmcqa(f"local:{folder / 'dev.json'}", "validation")
    assert len(docs) == len(ours) == 20
    for doc, rec in zip(docs, ours):
        assert utils.doc_to_text(doc) == prompts.format_prompt(rec["question"], rec["options"])
        assert utils.doc_to_target(doc) == rec["answer"]


def test_task_says_what_is_missing(tmp_path, monkeypatch):
    utils = _task_utils()
    monkeypatch.delenv("MEDMCQA_DIR", raising=False)
    with pytest.raises(ValueError, match="data_dir"):
        utils.load_release()
    with pytest.raises(ValueError, match="no dev.json"):
        utils.load_release(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="cop=0; the release uses 1-4"):
        utils.doc_to_target({"id": "x", "cop": 0})


@pytest.mark.slow
def test_harness_picks_the_same_letters_as_medcore(medmcqa_dir, tmp_path):
    """`--model hf --model_args pretrained=<folder>,peft=<adapter>,dtype=float32` with the task from include_path:
    every question's four log-likelihoods equal medcore's letter log-probabilities, so the letters agree."""
    import lm_eval  # in the dev extra: CI must run this, not skip it
    from lm_eval.tasks import TaskManager

    folder = _release_folder(medmcqa_dir, tmp_path)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tokenizer = models.load_tokenizer(TINY)
    models.load_model(TINY, dtype=torch.float32).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(0)
    model = lora.attach_adapter(models.load_model(f"local:{base_dir}", dtype=torch.float32),
                                LoraConfig(r=4, dropout=0.0), quantized=False)
    for name, p in model.named_parameters():  # B starts at zero; an adapter that changes nothing proves nothing
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(adapter_dir)

    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={base_dir},peft={adapter_dir},dtype=float32", tasks=[TASK_NAME],
        task_manager=TaskManager(include_path=str(TASK_DIR), metadata={"data_dir": str(folder)}),
        device="cpu", batch_size=4, log_samples=True)
    samples = sorted(out["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    harness = torch.tensor([[ll for ll, _ in s["filtered_resps"]] for s in samples], dtype=torch.float64)

    # the harness never cuts a prompt shorter than the model's context; medcore's default 512 would (byte tokens)
    ours = evaluate.score_choices(model, tokenizer, data.load_medmcqa(f"local:{folder / 'dev.json'}", "validation"),
                                  max_length=2048, progress=False)
    assert len(samples) == len(ours) == 20 and not ours["truncated"].any()
    mine = torch.tensor(ours[[f"logprob_{x}" for x in "ABCD"]].to_numpy())
    torch.testing.assert_close(harness, mine, rtol=0, atol=1e-4)
    assert harness.argmax(dim=1).tolist() == ours["pred"].tolist()
    assert [s["acc"] for s in samples] == ours["correct"].astype(float).tolist()
    assert out["results"][TASK_NAME]["acc,none"] == pytest.approx(ours["correct"].mean())
