"""The one-screen table ``svdadapt eval`` prints."""

from __future__ import annotations


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def _task_line(name: str, metrics: dict) -> str:
    shown = [f"{k} {_number(v)}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k]
    extra = [f"{metrics['examples']} examples"] if "examples" in metrics else []
    if "scoring" in metrics:
        extra.append(f"{metrics['scoring']}, {metrics['template']} template")
    note = f"  ({'; '.join(extra)})" if extra else ""
    return f"  {name:<26} {', '.join(shown[:3])}{note}"


def results_table(results: dict) -> str:
    """Perplexities, then task metrics, one line each, under a header naming what was evaluated."""
    target = results["target"]
    header = f"evaluation of {target['path']}"
    if target["kind"] == "run":
        header += f" (run: {target['method']}, {target['stage']})"
    lines = [header]
    if results["perplexity"]:
        lines.append(f"  {'perplexity':<26} {'PPL':>10} {'tokens':>10} {'windows':>8}")
        for source, r in results["perplexity"].items():
            lines.append(
                f"  {source:<26} {r['perplexity']:>10.3f} {r['tokens']:>10,} {r['windows']:>5} × {r['seq_len']}"
                f" {r.get('choice', '')}"
            )
    if results["tasks"]:
        lines.append("  task")
        lines += [_task_line(name, metrics) for name, metrics in results["tasks"].items()]
    return "\n".join(lines)
