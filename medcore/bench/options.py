"""What `python -m medcore bench` is asked to do: the options only the benchmark has, the levers, and the command
line that reads both.

Everything the product uses comes from the RunConfig (``--profile`` / ``--set``, ``--model`` for ``model.source``);
:class:`BenchOptions` holds the rest (baseline steps, warm-up, batch and pad length, how many questions, the
levers to run, the real peer tools to time, where the record goes). A lever is a list of variants, each a label and a dictionary of RunConfig
overrides (:data:`LEVERS`), as the study's ablations are; "toggle" flips the configuration's boolean.
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from medcore.bench.real_peers import PEERS
from medcore.config import add_config_arguments, config_from_args, set_field

ROOT = Path(__file__).resolve().parents[2]  # the checkout: medcore/bench/<this file>
DESCRIPTION = ("`python -m medcore bench`: the product's training and scoring against the usual recipes, timed in "
               "one run.")
LEVERS = {  # name -> (variant label, RunConfig overrides); each a rerun of the medcore training row
    "repeat": [("repeat", {})],
    "ckpt": [("checkpointing toggled", {"train.gradient_checkpointing": "toggle"})],
    "compile": [("compile toggled", {"train.compile": "toggle"})],
    "lora_input_float32": [("peft's float32 LoRA-input copy kept", {"train.lora_input_float32": True})],
    "optim": [("adamw_torch", {"train.optimizer": "adamw_torch"})],
}
LEVER_ALIASES = {"peft_cast": "lora_input_float32", "lora_cast": "lora_input_float32"}  # old names, one release
BUDGET_LEVER = "budget"  # one variant per --budgets value: train.token_budget and max rows scaled alongside
SCORE_LEVER = "score_batch"  # one variant per --score-batch-sizes value: eval.batch_size


@dataclass
class BenchOptions:
    """What only the benchmark needs; everything the product uses comes from the RunConfig."""
    steps: int = 30  # timed tutorial-baseline steps
    warmup: int = 3  # untimed baseline steps first
    baseline_batch_size: int = 16
    pad_length: int = 256
    n_train: int | None = None  # questions the medcore row trains on (None: all loaded)
    n_questions: int | None = None  # questions scored (None: all on CUDA, 64 on CPU)
    levers: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=lambda: [4096, 16384])
    score_batch_sizes: list[int] = field(default_factory=lambda: [64, 512])
    matmul_size: int | None = None  # None: 8192 on CUDA, 1024 on CPU
    source: str | None = None  # None: shared/medmcqa in the checkout or beside it, else the mirror
    out: str = "results/bench-product"
    run_id: str | None = None
    seed: int = 0
    headline: bool = False  # mark the record as its folder's headline (the one the Performance page leads with)
    peers: list[str] = field(default_factory=list)  # real peer tools (medcore.bench.real_peers.PEERS)
    peer_timeout: float = 900.0  # seconds one peer's subprocess may take


def parse_args(argv: Sequence[str] | None):
    """(RunConfig, BenchOptions) from the command line; bad values raise ConfigError or exit 2 naming the flag."""
    d = BenchOptions()
    p = argparse.ArgumentParser(prog="medcore bench", description=DESCRIPTION)
    add_config_arguments(p, profile="paper", what="the run configuration a user's command would get")
    p.add_argument("--model", default="random:gemma-2b", help="model.source (default: the Gemma-2B shape, random)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed tutorial-baseline steps")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed baseline steps first")
    p.add_argument("--baseline-batch-size", type=int, default=d.baseline_batch_size)
    p.add_argument("--pad-length", type=int, default=d.pad_length)
    p.add_argument("--n-train", type=int, default=None, help="questions the medcore row trains on (default all)")
    p.add_argument("--n-questions", type=int, default=None, help="questions scored (default: all on CUDA, 64 on CPU)")
    p.add_argument("--levers", default="", help=f"comma list of {', '.join([*LEVERS, BUDGET_LEVER, SCORE_LEVER])}")
    p.add_argument("--budgets", default=",".join(map(str, d.budgets)), help="token budgets of the budget lever")
    p.add_argument("--score-batch-sizes", default=",".join(map(str, d.score_batch_sizes)))
    p.add_argument("--matmul-size", type=int, default=None)
    p.add_argument("--source", default=None, help="MedMCQA source (default: shared/medmcqa if present, else mirror)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--run-id", default=None, help="default bench-<model>-<device>")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--headline", action="store_true", help="mark the record as its folder's headline")
    p.add_argument("--peers", default="", help=f"comma list of real peer tools to time too: {', '.join(PEERS)}")
    p.add_argument("--peer-timeout", type=float, default=d.peer_timeout, help="seconds per peer subprocess")
    argv = list(argv or [])
    a = p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    levers = [x.strip() for x in a.levers.split(",") if x.strip()]
    for old in sorted(set(levers) & set(LEVER_ALIASES)):
        print(f"[bench] lever {old!r} is now {LEVER_ALIASES[old]!r}; the old name goes in the next release",
              file=sys.stderr)
    levers = [LEVER_ALIASES.get(x, x) for x in levers]
    known = [*LEVERS, BUDGET_LEVER, SCORE_LEVER]
    if sorted(set(levers) - set(known)):
        p.error(f"unknown lever(s) {sorted(set(levers) - set(known))}; choose from {', '.join(known)}")
    peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    if sorted(set(peers) - set(PEERS)):
        p.error(f"unknown peer(s) {sorted(set(peers) - set(PEERS))}; choose from {', '.join(PEERS)}")
    for name in ("steps", "baseline_batch_size", "pad_length"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    sizes = {}
    for name in ("budgets", "score_batch_sizes"):
        try:
            sizes[name] = [int(x) for x in getattr(a, name).split(",") if x.strip()]
        except ValueError:
            sizes[name] = []
        if not sizes[name] or min(sizes[name]) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)!r}: give whole numbers of at least 1, comma-separated")
    cfg = config_from_args(a, f"model.source={a.model}")
    opts = BenchOptions(steps=a.steps, warmup=a.warmup, baseline_batch_size=a.baseline_batch_size,
                        pad_length=a.pad_length, n_train=a.n_train, n_questions=a.n_questions, levers=levers,
                        matmul_size=a.matmul_size, source=a.source, out=a.out, run_id=a.run_id, seed=a.seed,
                        headline=a.headline, peers=list(dict.fromkeys(peers)), peer_timeout=a.peer_timeout, **sizes)
    return cfg, opts


def default_source() -> str:
    """shared/medmcqa inside the checkout (it travels with a copy of the working tree), then ../shared/medmcqa, else
    the mirror."""
    for folder in (ROOT / "shared" / "medmcqa", ROOT.parent / "shared" / "medmcqa"):
        if (folder / "dev.json").is_file():
            return f"local:{folder}"
    return "mirror"


def lever_variants(levers: Sequence[str], cfg, opts: BenchOptions) -> list[tuple[str, str, dict]]:
    """(lever, label, RunConfig overrides) per variant; "toggle" flips the configuration's boolean."""
    out = []
    for lever in levers:
        if lever == BUDGET_LEVER:
            out += [(lever, f"token budget {b}", {"train.token_budget": b, "train.max_batch_size": max(1, b // 64)})
                    for b in opts.budgets]
        elif lever == SCORE_LEVER:
            out += [(lever, f"scoring batch {b}", {"eval.batch_size": b}) for b in opts.score_batch_sizes]
        else:
            for label, overrides in LEVERS[lever]:
                resolved = {k: (not _get(cfg, k)) if v == "toggle" else v for k, v in overrides.items()}
                out.append((lever, label, resolved))
    return out


def _get(cfg, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def variant_config(cfg, overrides: dict):
    """A validated copy of `cfg` with one variant's overrides (a smaller token budget shortens data.max_length)."""
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        set_field(out, key, value)
    if out.train.token_budget < out.data.max_length:  # a smaller budget lever: the longest example must fit
        out.data.max_length = out.train.token_budget
    return out.validate()
