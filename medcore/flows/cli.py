"""Command line: `python -m medcore <command>`; each command is a thin shell over the library."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from medcore.config import add_config_arguments, config_from_args
from medcore.flows.pipeline import parse_parameters, run_pipeline


def _cmd_data(args) -> None:
    from medcore.data import load_medmcqa
    from medcore.subjects import data_summary_text

    ds = load_medmcqa(args.source, split=args.split, on_invalid=args.on_invalid)
    print(f"source={args.source} split={args.split} records={len(ds)}")
    print(data_summary_text(ds))


def _cmd_evaluate(args) -> None:
    from medcore.flows.evaluate_command import evaluate_defaults, evaluate_model

    base = config_from_args(args) if args.profile else evaluate_defaults().with_overrides(args.set)
    evaluate_model(model_spec=args.model, source=args.source, split=args.split, limit=args.limit,
                   precision=args.precision, adapter=args.adapter, batch_size=args.batch_size,
                   results_dir=args.results_dir, run_id=args.run_id, on_invalid=args.on_invalid,
                   rotations=args.rotations, base=base)


def _cmd_train(args) -> None:
    from medcore.flows.workflows import finetune

    cfg = config_from_args(args)
    finetune(cfg, output_dir=args.output_dir, resume=args.resume)


def _cmd_run(args) -> None:
    run_pipeline(args.profile, args.set, run_dir=args.run_dir, resume=args.resume,
                 parameters=parse_parameters(args.parameter))


def _cmd_book(args) -> None:
    from medcore.flows.book import build_book

    build_book(run_dir=args.run_dir)


def _cmd_ask(args) -> None:
    from medcore.flows.ask import ask, question_record, read_questions

    if (args.file is None) == (args.question is None):
        raise ValueError("ask: give --question with --options, or --file <questions.jsonl>, not both")
    if args.file is not None:
        if args.options:
            raise ValueError("ask: --options goes with --question; a --file carries each question's options")
        records = read_questions(args.file)
    else:
        records = [question_record(args.question, args.options or [], where="--options")]
    ask(args.model, records, adapter=args.adapter, precision=args.precision, max_length=args.max_length,
        as_json=args.json)


def _cmd_export(args) -> None:
    from medcore.lora import merge_for_export

    out = merge_for_export(args.model, args.adapter, args.out)
    print(f"merged bf16 model with its tokenizer: {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="load a MedMCQA split and print counts by subject and tier")
    p.add_argument("--source", default="mirror", help="hub | hub:<repo> | local:<path> | mirror")
    p.add_argument("--split", default="validation")
    p.add_argument("--on-invalid", default="raise", choices=["raise", "skip"])
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("evaluate", help="score a model on MedMCQA and write a run record")
    add_config_arguments(p, profile=None, what="without a profile: the defaults below; a flag given wins over both")
    p.add_argument("--model", default=None, help="default embedded:gemma-3-270m (or the profile's model.source)")
    p.add_argument("--source", default=None, help="default mirror (or the profile's data.source)")
    p.add_argument("--split", default=None, help="default validation (or the profile's data.eval_split)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--precision", default=None, help="bf16 (default without a profile) | int8 | nf4 | fp4 (4-bit "
                   "with double quant) | fp32 (unquantized float32: lm-evaluation-harness's exact choices)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter folder to apply")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on a GPU, 16 on a CPU")
    p.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                   help="also score the options in their other 3 cyclic orders (circular and debiased accuracy, "
                        "4x the time); default: on with a GPU, off on a CPU")
    p.add_argument("--results-dir", default=None, help="default results (or the profile's results_dir)")
    p.add_argument("--run-id", default=None)
    p.add_argument("--on-invalid", default=None, choices=["raise", "skip"],
                   help="default raise; skip: score the valid records of a file with broken ones (the report counts them)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="QLoRA fine-tuning for a profile")
    add_config_arguments(p)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("run", help="execute notebooks 01-05 with papermill for a profile")
    add_config_arguments(p)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", action="store_true", help="skip notebooks that already finished")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, the value read as YAML: -p presets '[bf16, nf4+dq]' -p cost_questions 128")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("book", help="build the Jupyter Book from the last pipeline run")
    p.add_argument("--run-dir", default=None)
    p.set_defaults(func=_cmd_book)

    # commands with their own argument parser (PASS_THROUGH): listed here for --help
    sub.add_parser("study", help="the study: zero-shot, QLoRA, k-fold, ablations, scale figures")
    sub.add_parser("bench", help="training and scoring throughput against baseline recipes")
    sub.add_parser("scaleout", help="one GPU against DDP and FSDP on several GPUs of one host")

    p = sub.add_parser("ask", help="the letter distribution a model gives to a question, as the scorer computes it")
    p.add_argument("--model", default="embedded:gemma-3-270m")
    p.add_argument("--adapter", default=None, help="a PEFT adapter folder to apply")
    p.add_argument("--precision", default="bf16", help="bf16 | int8 | nf4 | fp4 (4-bit with double quant) | fp32 "
                   "(as evaluate; fp32 is what lm-evaluation-harness agrees with question for question)")
    p.add_argument("--question", default=None)
    p.add_argument("--options", nargs="+", default=None, metavar="OPTION", help="exactly four, for A-D")
    p.add_argument("--file", default=None, help="JSON lines: question + options (or opa..opd), optional answer/cop")
    p.add_argument("--max-length", type=int, default=512, help="prompt tokens; a longer question is cut")
    p.add_argument("--json", action="store_true", help="one JSON object per question instead of a table")
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("export", help="merge an adapter into a bf16 copy of the base: a standard HF model folder")
    p.add_argument("--model", required=True, help="the base the adapter was trained on (a model spec)")
    p.add_argument("--adapter", required=True, help="a PEFT adapter folder")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.set_defaults(func=_cmd_export)
    sub.add_parser("gpu-check", help="every GPU entry point with its defaults, a few steps each (run before resolving)")
    return parser


PASS_THROUGH = {"study": "medcore.flows.study", "bench": "medcore.bench.command", "scaleout": "medcore.scale.scaleout",
                "gpu-check": "medcore.bench.gpucheck"}  # commands with their own argument parser
# errors that are the user's to fix (a setting, a record, a file, the network): their message says what and how
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
USER_ERROR_NAMES = ("PipelineError", "NonFiniteLossError", "SourceUnavailableError", "HubUnavailableError",
                    "EmbeddedModelUnavailable")


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or any(cls.__name__ in USER_ERROR_NAMES for cls in type(err).__mro__)


def _close_progress_bars() -> None:
    """Close a cut loop's tqdm bars now: closed at exit instead, they would print below the last message."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def _run(argv: list[str]) -> int:
    if argv and argv[0] in PASS_THROUGH:
        result = importlib.import_module(PASS_THROUGH[argv[0]]).main(argv[1:])
        return result if isinstance(result, int) else 0  # bench returns its metrics: not an exit status
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Every command through one path: a user's mistake is one line and exit 2, Ctrl-C one line and exit 130,
    anything else keeps its traceback (so does every error with ``MEDCORE_TRACEBACK=1``)."""
    argv = sys.argv[1:] if argv is None else argv
    command = f"medcore {argv[0]}" if argv and not argv[0].startswith("-") else "medcore"
    try:
        return _run(argv)
    except KeyboardInterrupt as err:
        _close_progress_bars()
        print(f"\n{command}: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)  # below a progress bar
        return 130
    except Exception as err:
        if not is_user_error(err) or os.environ.get("MEDCORE_TRACEBACK"):
            raise
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:  # a pass-through command's own refusal, e.g. SystemExit("--gpus must be ...")
        if not isinstance(err.code, str):
            raise
        print(f"{command}: error: {err.code}", file=sys.stderr)
        return 2

