"""Plain helpers that tests in several folders use (fixtures live in the conftest.py files; README.md
says which is where).

- the command line as a user runs it: :func:`run`, and the checks of what it says: :func:`bad` (exit 2
  and exactly one ``svdadapt: error:`` line), :func:`one_line` (the same, progress bars aside, naming
  given names), :func:`ok`, :func:`refused`, :func:`said`
- inputs and references: :func:`padded_batches`, :func:`captured_reference`, :func:`make_run`
- two float32 computations of one function: :data:`IDS`, :data:`F32`, :func:`logits`, :func:`rel`
- launches (``torchrun``): :data:`LAUNCH_ENV`, :func:`calibrate_args`
- :data:`REPO`: the repository root (examples/, benchmarks/)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from svdadapt.cli import main
from svdadapt.commands import BuildOptions, build
from svdadapt.targets import find_targets

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ command line
def run(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bad(capsys, *args) -> str:
    """Run the CLI; it must fail with exit 2 and exactly one ``svdadapt: error:`` line on stderr."""
    code, _, err = run(capsys, *args)
    # progress bars redraw with carriage returns; what remains of each line is what a terminal shows
    lines = [line.split("\r")[-1] for line in err.strip().splitlines() if line.split("\r")[-1].strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("svdadapt: error: ") and "Traceback" not in err, err
    return lines[0]


def one_line(capsys, *args, names=()) -> str:
    """Run the CLI; it must fail with exit 2 and one line on stderr (progress bars aside) naming ``names``."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].strip()]
    lines = [line for line in lines if not re.search(r"\d+%\|", line)]  # progress bars
    assert code == 2 and len(lines) == 1 and lines[0].startswith("svdadapt: error:"), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def ok(capsys, *args) -> str:
    """Run the CLI; it must succeed. Its stdout."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def refused(capsys, *args) -> str:
    """Run the CLI; it must refuse (exit 2, no traceback). The last line of stderr."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    return err.splitlines()[-1]


def said(capsys) -> tuple[str, str]:
    """What the commands run since the last look wrote: (stdout, stderr)."""
    captured = capsys.readouterr()
    return captured.out, captured.err


# ------------------------------------------------------------------------------------------ inputs
def padded_batches(vocab: int = 512, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Three batches of random tokens with right padding of varied lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [[12, 7, 12], [5, 12], [9]]
    batches = []
    for group in lengths:
        longest = max(group)
        ids = torch.randint(3, vocab, (len(group), longest), generator=gen)
        mask = torch.zeros(len(group), longest, dtype=torch.long)
        for row, n in enumerate(group):
            mask[row, :n] = 1
            ids[row, n:] = 0  # pad id
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def captured_reference(model, batches):
    """{layer: (C, mean|x|)} in float64 from inputs captured with plain hooks, padding removed."""
    targets = find_targets(model)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach().clone()))
        for name, module in targets.items()
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in hooks:
        h.remove()
    masks = [b["attention_mask"].bool() for b in batches]
    reference = {}
    for name, inputs in seen.items():
        x = torch.cat([inp[mask] for inp, mask in zip(inputs, masks)]).double()  # (tokens, in)
        reference[name] = (x.T @ x / x.shape[0], x.abs().mean(0))
    return reference


def make_run(tiny_dirs, text_file, out, kind="llama", method="corda-kpa", **extra):
    """A run built by the build command (rank 4, alpha 8; CorDA rows calibrate 8 × 32 tokens of ``text_file``)."""
    values = dict(
        model=str(tiny_dirs[kind]), method=method, rank=4, alpha=8.0, out=str(out), device="cpu",
        data=str(text_file) if method.startswith("corda") else None, samples=8, seq_len=32, batch_size=4,
    )  # fmt: skip
    values.update(extra)
    return build(BuildOptions.of(**values), progress=False).run


# ------------------------------------------------------------------------------------------ float32
# Two float32 computations of the same function (e.g. W_res·x + s·BA·x vs W·x): each rounds
# differently, by ~1e-7 per operation, grown through two blocks to ~1e-5 of the logits' range.
F32 = 3e-5

IDS = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS) -> torch.Tensor:
    """Logits (or an encoder's last hidden states)."""
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------ launches
LAUNCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def calibrate_args(tiny_dirs, text_file, out, *extra):
    """`svdadapt calibrate` of 12 samples × 32 tokens in batches of 2 (6 batches: 3 per process of two)."""
    return ["calibrate", "--model", tiny_dirs["llama"], "--data", text_file, "--samples", "12", "--seq-len", "32",
            "--batch-size", "2", "--device", "cpu", "--out", out, *extra]  # fmt: skip
