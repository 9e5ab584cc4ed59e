"""Shared fixtures. The real MedMCQA files live in ../shared/medmcqa next to the repository."""
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


@pytest.fixture
def no_loading(monkeypatch):
    """Anything heavy (model, tokenizer, data, training) fails the test if it is reached."""
    import medcore.data
    import medcore.models
    import medcore.quantize
    import medcore.workflows

    def forbidden(*args, **kwargs):
        raise AssertionError("a model, tokenizer or data set was loaded for a config that is invalid")
    for target, name in [(medcore.models, "load_model"), (medcore.models, "load_tokenizer"),
                         (medcore.quantize, "load_quantized"), (medcore.data, "load_medmcqa"),
                         (medcore.workflows, "finetune")]:
        monkeypatch.setattr(target, name, forbidden)
