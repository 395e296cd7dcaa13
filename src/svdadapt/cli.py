"""The ``svdadapt`` command: one console script whose subcommands call plain functions and print
what they return.

Every subcommand is a row of :func:`subcommands`: its options dataclass (whose docstring and field
help texts are the ``--help``) and the function that runs it and returns a result.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from . import __version__, backend, errors
from .backend import set_aside_live_objects
from .errors import SvdadaptError
from .options import add_aliases, add_options, from_namespace, mapping_problems


def subcommands() -> dict:
    """Every subcommand: the quickstart, the commands, and recipes, in the order --help lists them."""
    from .commands import COMMANDS, Command
    from .pipeline import RunOptions, run_recipe
    from .quickstart import QuickstartOptions, quickstart

    return {
        "quickstart": Command("quickstart", QuickstartOptions, quickstart),
        **COMMANDS,
        "run": Command("run", RunOptions, run_recipe, launchable=lambda _o: True),
    }


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (and where to read the usage), as every error is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands: dict) -> tuple[argparse.ArgumentParser, dict]:
    parser = OneLineParser(
        prog="svdadapt",
        description="Knowledge-aware, SVD-based parameter-efficient fine-tuning (CorDA, KaSA).",
    )
    parser.add_argument("--version", action="version", version=f"svdadapt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {}
    for name, command in commands.items():
        doc = (command.options.__doc__ or "").strip()
        summary_line = " ".join(doc.split("\n\n")[0].split())
        p = sub.add_parser(name, help=summary_line, description=summary_line)
        add_options(p, command.options)
        add_aliases(p, command.options)  # --learning-rate for --module-lr, ... (hidden)
        p.add_argument("--config", metavar="YAML", help="read option values from a YAML mapping (flags override)")
        subparsers[name] = p
    return parser, subparsers


def _apply_config(argv: list[str], subparsers: dict, commands: dict) -> None:
    """``--config FILE``: its keys (option names, - or _) become the subcommand's defaults."""
    if not argv or argv[0] not in subparsers or "--config" not in argv:
        return
    index = argv.index("--config")
    if index + 1 >= len(argv):
        return  # argparse reports the missing value
    from .pipeline.recipe import load_yaml_mapping

    values = {str(k).replace("-", "_"): v for k, v in load_yaml_mapping(argv[index + 1]).items() if k != "config"}
    # aliases renamed, `offload: off` (which YAML reads as false) read as the flag reads it; every problem at once
    values, problems = mapping_problems(commands[argv[0]].options, values, argv[index + 1], complete=False)
    if problems:
        raise errors.Problems(problems)
    parser = subparsers[argv[0]]
    for action in parser._actions:  # a flag the file gives is no longer required on the line
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parsed arguments; a command's trailing list (``run``'s KEY=VALUE overrides) may also come
    after its flags (``svdadapt run r.yaml --resume train.epochs=2``), which argparse alone refuses."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``svdadapt`` console script; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before a command started (while its libraries load)
        print("svdadapt: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    commands = subcommands()
    parser, subparsers = build_parser(commands)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _apply_config(argv, subparsers, commands)
    except SvdadaptError as exc:
        print(f"svdadapt: error: {exc}", file=sys.stderr)
        return 2
    args = _parse(parser, argv)
    command = commands[args.command]
    _quiet_libraries()
    try:
        stopped = f"stopped by SIGTERM{RESUMING.get(args.command, '')}"
        with backend.stop_on_sigterm(stopped):  # as after Ctrl-C: temporary files removed, nothing half-done
            result = command.start(from_namespace(command.options, args))
        if backend.launch().writer:  # one summary per launch, not one per process
            print(result.summary())
    except SvdadaptError as exc:
        print(f"svdadapt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svdadapt: interrupted{RESUMING.get(args.command, '')}", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions, ...: said of the output's own name
        message = TEMPORARY.sub(r"\1", str(exc))
        print(f"svdadapt: error: {message}", file=sys.stderr)
        return 2
    except MemoryError:
        advice = "give it less at once (--batch-size, --samples, --seq-len), or offload the model (--offload on)"
        print(f"svdadapt: error: {args.command} ran out of memory; {advice}", file=sys.stderr)
        return 2
    return 0


RESUMING = {  # what an interrupted command leaves to continue from
    "calibrate": " (continue it with --resume)",
    "train": " (continue it with --resume if it ran with --save-checkpoints or --save-steps; else train again)",
    "compress": " (run it again: it starts over)",
    "run": " (continue the pipeline with --resume: finished stages are kept)",
}

# the temporary sibling an atomic write fills (.NAME.XXXXXXXX.tmp) is named by the output it becomes
TEMPORARY = re.compile(r"\.([^/\s]+?)\.[a-z0-9_]{8}\.tmp")


def console() -> None:
    """The ``svdadapt`` console script (and ``python -m svdadapt``): :func:`main` in a process of
    its own, whose imported modules and, at exit, everything else the collector need not walk."""
    set_aside_live_objects()
    status = main()
    set_aside_live_objects()  # the interpreter's exit collections would walk them all again
    sys.exit(status)


if __name__ == "__main__":
    console()
