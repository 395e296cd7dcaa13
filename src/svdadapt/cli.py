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
    print(f"PEFT LoRA for the original model: {out}")
    print(f"  load it with PeftModel.from_pretrained(<original model>, {str(out)!r})")


def _commands() -> dict[str, Command]:
    from .build.job import BuildOptions
    from .calibrate.job import CalibrateOptions
    from .export import ExportOptions
    from .merge import MergeOptions
    from .quickstart import QuickstartOptions

    return {
        "quickstart": Command(QuickstartOptions, _quickstart),
        "calibrate": Command(CalibrateOptions, _calibrate),
        "build": Command(BuildOptions, _build),
        "merge": Command(MergeOptions, _merge),
        "export": Command(ExportOptions, _export),
    }


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svdadapt",
        description="Knowledge-aware, SVD-based parameter-efficient fine-tuning (CorDA, KaSA).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        doc = (command.options.__doc__ or "").strip()
        summary_line = " ".join(doc.split("\n\n")[0].split())
        p = sub.add_parser(name, help=summary_line, description=summary_line)
        add_options(p, command.options)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``svdadapt`` console script; returns the exit status."""
    commands = _commands()
    args = build_parser(commands).parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
