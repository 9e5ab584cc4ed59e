"""The cost of scoring: latency, throughput per batch size, peak memory and the conditions measured under."""
from medcore.scoring_cost import measure_cost


def test_measure_cost(tiny, tok, questions):
    cost = measure_cost(tiny, tok, questions[3:7], batch_sizes=(1, 2), n_latency=3, warmup=1, max_length=2048)
    assert cost["latency_n"] == 3 and 0 < cost["latency_ms_median"] <= cost["latency_ms_p90"]
    assert [t["batch_size"] for t in cost["throughput"]] == [1, 2] and cost["best_qps"] > 0
    assert cost["peak_memory_bytes"] > 0 and cost["conditions"]["device"] == "cpu"
    assert cost["conditions"]["dtype"] == "float32" and cost["conditions"]["mean_prompt_tokens"] > 50
