"""The bench record's targets (medcore.bench.report), computed from measured rows: met or not, projected to the whole
split, and counted for the GPU path only under its conditions."""
import pytest

from medcore.bench import report
from medcore.config import RunConfig


def test_targets_are_computed_from_the_measurements():
    cfg = RunConfig()
    cfg.model.source = "random:gemma-2b"  # the defaults are NF4 + double quantization
    m = {"run": {"device_type": "cuda"},
         "training": [{"recipe": "medcore", "real_tokens_per_s": 26_000.0, "mfu": 0.40, "peak_memory_bytes": 9.5e9,
                       "token_budget": 16384, "gradient_checkpointing": True},
                      {"recipe": "baseline", "real_tokens_per_s": 2_000.0, "mfu": 0.03}],
         "scoring": [{"questions": 4183, "questions_per_s": 2_000.0, "cold_seconds": 2.5},
                     {"questions": 4183, "questions_per_s": 400.0}],
         "levers": [{"lever": "budget", "token_budget": 4096, "gradient_checkpointing": True,
                     "peak_memory_bytes": 5.5e9, "error": None}]}
    rows = {r["target"].split(",")[0]: r for r in report.targets(m, cfg)}
    assert [r["met"] for r in rows.values()] == [True, True, True, True, True, True, False]
    assert rows["training real tokens/s"]["measured"] == pytest.approx(13.0)
    assert rows["peak memory at 4"]["measured"] == pytest.approx(5.5) and all(r["conditions_match"] for r in rows.values())
    m["scoring"][0].update(questions=1000, cold_seconds=1.0)  # projected to the whole split
    first = next(r for r in report.targets(m, cfg) if r["target"].startswith("scoring 4,183"))
    assert first["measured"] == pytest.approx(4.183) and not first["met"] and "projected from 1000" in first["target"]
    bf16 = cfg.to_dict()
    bf16["quant"]["precision"] = "bf16"  # a record's config.json dict works as well
    assert not any(r["conditions_match"] for r in report.targets(m, bf16))
    assert not any(r["conditions_match"] for r in report.targets({**m, "run": {"device_type": "cpu"}}, cfg))
