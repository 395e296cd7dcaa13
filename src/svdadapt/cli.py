"""The ``svdadapt`` command: one console script whose subcommands call plain functions.

Every subcommand is a row of :data:`COMMANDS`: its options dataclass (whose docstring and field
help texts are the ``--help``) and the function that runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .backend import set_aside_live_objects
from .errors import SvdadaptError
from .options import add_options, from_namespace


@dataclass(frozen=True)
class Command:
    options: type
    run: Callable[[object], None]


def _calibrate(opts) -> None:
    from .calibrate.job import calibrate, summary

    print(summary(calibrate(opts)))


def _quickstart(opts) -> None:
    from .quickstart import quickstart

    quickstart(opts)


def _build(opts) -> None:
    from .build.job import build, summary

    print(summary(build(opts)))


def _merge(opts) -> None:
    from .merge import merge

    print(f"merged model: {merge(opts)}")


def _export(opts) -> None:
    from .export import export

    out = export(opts)
    target = "the original model" if opts.against_original else "the run's base"
    print(f"PEFT LoRA for {target}: {out}")
    print(f"  load it with PeftModel.from_pretrained(<{target}>, {str(out)!r})")


def _train(opts) -> None:
    from .train.job import train

    run = train(opts)
    print(f"trained run: {run.path} (merge or export it like a built run)")


def _compress(opts) -> None:
    from .compress import compress

    print("\n".join(compress(opts).lines))


def _eval(opts) -> None:
    from .evaluate.job import evaluate
    from .evaluate.report import results_table

    results, out = evaluate(opts)
    print(results_table(results))
    print(f"results: {out}" if out else "results: not written (pass --out FILE.json to keep them)")


def _run(opts) -> None:
    from .pipeline import run_recipe

    run_recipe(opts)


def _commands() -> dict[str, Command]:
    from .build.job import BuildOptions
    from .calibrate.job import CalibrateOptions
    from .compress import CompressOptions
    from .evaluate.job import EvalOptions
    from .export import ExportOptions
    from .merge import MergeOptions
    from .pipeline import RunOptions
    from .quickstart import QuickstartOptions
    from .train.job import TrainOptions

    return {
        "quickstart": Command(QuickstartOptions, _quickstart),
        "calibrate": Command(CalibrateOptions, _calibrate),
        "build": Command(BuildOptions, _build),
        "merge": Command(MergeOptions, _merge),
        "export": Command(ExportOptions, _export),
        "train": Command(TrainOptions, _train),
        "eval": Command(EvalOptions, _eval),
        "compress": Command(CompressOptions, _compress),
        "run": Command(RunOptions, _run),
    }


def build_parser(commands: dict[str, Command]) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="svdadapt",
        description="Knowledge-aware, SVD-based parameter-efficient fine-tuning (CorDA, KaSA).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {}
    for name, command in commands.items():
        doc = (command.options.__doc__ or "").strip()
        summary_line = " ".join(doc.split("\n\n")[0].split())
        p = sub.add_parser(name, help=summary_line, description=summary_line)
        add_options(p, command.options)
        p.add_argument("--config", metavar="YAML", help="read option values from a YAML mapping (flags override)")
        subparsers[name] = p
    return parser, subparsers


def _apply_config(argv: list[str], subparsers: dict) -> None:
    """``--config FILE``: its keys (option names, - or _) become the subcommand's defaults."""
    if not argv or argv[0] not in subparsers or "--config" not in argv:
        return
    index = argv.index("--config")
    if index + 1 >= len(argv):
        return  # argparse reports the missing value
    from .recipes import load_yaml_mapping

    values = {k.replace("-", "_"): v for k, v in load_yaml_mapping(argv[index + 1]).items()}
    parser = subparsers[argv[0]]
    known = {a.dest: a for a in parser._actions}
    unknown = sorted(set(values) - set(known) - {"config"})
    if unknown:
        raise SvdadaptError(f"unknown key {unknown[0]!r} in {argv[index + 1]} for svdadapt {argv[0]}")
    for dest in values:
        known[dest].required = False
    parser.set_defaults(**values)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``svdadapt`` console script; returns the exit status."""
    commands = _commands()
    parser, subparsers = build_parser(commands)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _apply_config(argv, subparsers)
    except SvdadaptError as exc:
        print(f"svdadapt: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    command = commands[args.command]
    _quiet_libraries()
    try:
        command.run(from_namespace(command.options, args))
    except SvdadaptError as exc:
        print(f"svdadapt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svdadapt: interrupted (long jobs continue where they stopped with --resume)", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"svdadapt: error: {exc}", file=sys.stderr)
        return 2
    return 0


def console() -> None:
    """The ``svdadapt`` console script (and ``python -m svdadapt``): :func:`main` in a process of
    its own, whose imported modules and, at exit, everything else the collector need not walk."""
    set_aside_live_objects()
    status = main()
    set_aside_live_objects()  # the interpreter's exit collections would take ~1 s
    sys.exit(status)


if __name__ == "__main__":
    console()
