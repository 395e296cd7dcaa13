"""Knowledge retention at matched task learning: does CorDA-KPA (or KaSA's truncation, or any row)
forget less than LoRA when every method has learned the task equally well?

The study of issue 14, on the embedded SmolLM2-135M-Instruct with bundled text only (no hub):

1. **Calibrate once** (`calibrate`): the bundled `wiki` calibration part (knowledge to keep) for
   corda-kpa, kasa --truncation context, eva and lora-null; and, per task, the task's own training
   prompts for corda-ipa (instruction-previewed: a second store per task).
2. **Build** (`build`) every method at the same rank r and alpha = r, on all 210 linear layers: lora,
   pissa, milora, corda-ipa, corda-kpa, kasa (plain-SVD truncation), kasa-context, eva, lora-null.
   Trainable-parameter budget: the same rank everywhere gives r·(in + out) per layer; KaSA adds
   its ΔΣ (r more per layer: +0.07%), and EVA moves rank between layers keeping the total Σ r
   (ρ = 2, PEFT's default) — not the parameter count, since ranks go to narrower layers (the k/v
   projections): −9.6% parameters at r = 4 in the quick run. The measured trainable counts are
   printed and stored with the results; equalising EVA's parameters instead would mean a larger r.
   Deterministic inits are built once; random ones (lora, kasa) once per seed.
3. **Train** (`train`, SFT, `--order length`, loss on the response) each method on each task, at
   each learning rate of a 3-value sweep and each seed, for the same number of optimizer steps.
   Tasks: `polarity` (bundled movie-review sentiment, 160 reviews) and `news-cloze` (454
   fill-in-the-blank prompts made from the bundled news text, the blank being each sentence's
   longest word; `svdadapt/data/cloze.py` documents how).
4. **Measure** each trained model: the *held-out task loss* (mean NLL per response token, chat
   template as in training, on the task's held-out part — `polarity-heldout`, `news-cloze-heldout`,
   examples never trained on and the same for every seed), *held-out Wikipedia perplexity*
   (`wiki-heldout`, articles never calibrated on) and a *cloze probe of facts*: sentences cut
   before their last content word (a capitalised name when there is one), scored by the
   log-likelihood of the true word given the prefix (`evaluate/likelihood.response_logprobs`),
   on sentences of the very calibration windows KPA was told to keep ("seen") and of held-out
   articles ("unseen"). Forgetting = the rise of held-out perplexity (%) and the fall of the
   cloze log-likelihood, both against the original model.
5. **Match task learning.** For each (task, method, seed) the path init → lr1 → lr2 → lr3 gives
   (task loss, forgetting) points; forgetting is linearly interpolated at a common target task
   loss, where the path first crosses it. The target is the loss the worst method reaches at its
   best learning rate (the largest per-(method, seed) minimum among methods that learn at all), so
   it lies in almost every method's range; `--target-loss` fixes it. The table gives mean ± sample
   standard deviation over seeds; the PNG (one panel per task) shows every point and the matched ones.

Full mode (default), sized for this 2-core CPU (≤ 90 minutes): 9 methods × 3 learning rates
(1.5e-4, 5e-4, 1.5e-3) × 3 seeds × 2 tasks = 162 trainings at rank 16, each 10 optimizer steps of
batch 4 (cosine, 10% warm-up); wiki calibration 32 × 256 tokens; measured on 32 held-out task
examples, 6 × 256 tokens of held-out Wikipedia and 64 + 64 cloze items. Measured on this idle
2-core CPU: 71.8 minutes (22–30 s per training, measuring included), run as its two tasks' halves
and joined with `--combine`; docs/results.md has the figures and their reading.

    python benchmarks/retention.py --quick --out /tmp/retention-quick   # ≤ 10 min: whole pipeline, 1 seed, 1 lr
    python benchmarks/retention.py --out /tmp/retention --json docs/retention.json     # full mode
    # or a task per run (or machine), joined: the same study
    python benchmarks/retention.py --tasks polarity --out /tmp/ret-polarity
    python benchmarks/retention.py --tasks news-cloze --out /tmp/ret-news
    python benchmarks/retention.py --combine /tmp/ret-polarity,/tmp/ret-news --out /tmp/retention
    # GPU, larger scale (any causal LM; a rerun with the same --out resumes where it stopped):
    python benchmarks/retention.py --device cuda --model default --rank 32 --steps 200 --batch-size 16 \\
        --calib-samples 256 --calib-seq-len 512 --seeds 0,1,2,3,4 --lrs 1e-4,3e-4,1e-3 --eval-windows 64 \\
        --probe-items 400 --task-eval-items 126 --out runs/retention --json retention.json

Progress lines go to stdout; `--out DIR` holds the covariance stores, runs, `results.json` (every
measured point, written after each one) and `retention.png`. Disk: every build that changes the base
writes a whole model (~0.5 GB for SmolLM2): 5.4 GB for the quick mode's 10 builds, ~9 GB for the
full mode's 16; trained runs are hard-linked copies, removed once measured unless `--keep-runs`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

METHODS = ("lora", "pissa", "milora", "corda-ipa", "corda-kpa", "kasa", "kasa-context", "eva", "lora-null")  # rows
TASKS = {"polarity": "polarity-heldout", "news-cloze": "news-cloze-heldout"}  # training source -> held-out source
IPA = "corda-ipa"  # calibrated on the task's own prompts


@dataclass
class Settings:
    model: str = "default"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    rank: int = 16
    lrs: list[float] = field(default_factory=lambda: [1.5e-4, 5e-4, 1.5e-3])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 10
    batch_size: int = 4
    max_length: int = 128
    calib_samples: int = 32
    calib_seq_len: int = 256
    ipa_samples: int = 64  # task prompts for corda-ipa's store
    eval_windows: int = 6
    eval_seq_len: int = 256
    probe_items: int = 64  # per side (seen / unseen)
    task_eval_items: int = 32  # held-out task examples
    device: str | None = None


QUICK = Settings(
    rank=4, lrs=[1e-3], seeds=[0], steps=4, batch_size=4, calib_samples=8, calib_seq_len=128, ipa_samples=16,
    eval_windows=2, eval_seq_len=128, probe_items=16, task_eval_items=16,
)  # fmt: skip


# ---------------------------------------------------------------- planning (pure, tested)


def random_init(name: str) -> bool:
    """Whether the method's adapter starts random (then each seed gets its own build)."""
    from svdadapt.adapters.init import INITS
    from svdadapt.methods import get_method

    return not INITS[get_method(name).init].seeded_A


def build_key(name: str, task: str, seed: int, random: bool) -> str:
    """Which built run a training starts from: corda-ipa's per task, random inits' per seed."""
    key = f"{name}@{task}" if name == IPA else name
    return f"{key}#s{seed}" if random else key


@dataclass(frozen=True)
class Job:
    task: str
    method: str
    seed: int
    lr: float

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/s{self.seed}/lr{self.lr:g}"


def plan(settings: Settings, random: dict[str, bool]) -> tuple[list[Job], dict[str, tuple[str, str, int]]]:
    """Every training, seeds outermost (a partial run holds whole seeds), and the builds they need
    (key -> (method, task for corda-ipa's store or "", seed))."""
    jobs = [
        Job(task, method, seed, lr)
        for seed, task, method, lr in itertools.product(settings.seeds, settings.tasks, settings.methods, settings.lrs)
    ]
    builds = {}
    for job in jobs:
        key = build_key(job.method, job.task, job.seed, random[job.method])
        seed = job.seed if random[job.method] else 0
        builds.setdefault(key, (job.method, job.task if job.method == IPA else "", seed))
    return jobs, builds


def crossing(path: list[tuple[float, dict]], target: float, key: str) -> float | None:
    """``key``'s value where the path of (task loss, measures) points — init first, then by rising
    learning rate — first crosses task loss ``target`` (linear between the two points); None if never."""
    for (x0, m0), (x1, m1) in itertools.pairwise(path):
        if min(x0, x1) <= target <= max(x0, x1):
            if x0 == x1:
                return m0[key]
            t = (target - x0) / (x1 - x0)
            return m0[key] + t * (m1[key] - m0[key])
    return None


def common_target(paths: dict[tuple[str, int], list[tuple[float, dict]]], original_loss: float) -> float | None:
    """The largest per-(method, seed) best task loss among paths that go below the original's loss:
    what the worst learner reaches at its best learning rate (None if nothing learned)."""
    bests = [min(x for x, _ in path) for path in paths.values()]
    learned = [b for b in bests if b < original_loss]
    return max(learned) if learned else None


def mean_spread(values: list[float]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


MEASURES = ("ppl_change", "seen_change", "unseen_change")


def summarize(points: list[dict], inits: dict[str, dict], original: dict, targets: dict) -> dict:
    """Per task: the target, and per method the matched forgetting (mean, sd, n) and the raw paths."""
    out = {}
    for task in dict.fromkeys(p["task"] for p in points):  # in the order trained
        base = {"task_loss": original["task_loss"][task], **{k: 0.0 for k in MEASURES}}
        paths: dict[tuple[str, int], list[tuple[float, dict]]] = {}
        for p in sorted((p for p in points if p["task"] == task), key=lambda p: p["lr"]):
            start = inits.get(p["method"], {}).get(task, base)
            paths.setdefault((p["method"], p["seed"]), [(start["task_loss"], start)]).append((p["task_loss"], p))
        target = targets[task] if task in targets else common_target(paths, base["task_loss"])
        rows = {}
        for method in dict.fromkeys(m for m, _ in paths):
            mine = {seed: path for (m, seed), path in paths.items() if m == method}
            matched = {k: [crossing(path, target, k) if target else None for path in mine.values()] for k in MEASURES}
            best = [min(x for x, _ in path) for path in mine.values()]
            pairs = zip(matched["seen_change"], matched["unseen_change"], strict=True)
            rows[method] = {
                "best_task_loss": mean_spread(best),
                **{k: mean_spread(v) for k, v in matched.items()},
                "seen_minus_unseen": mean_spread([a - b for a, b in pairs if a is not None and b is not None]),
                "matched_seeds": sum(v is not None for v in matched["ppl_change"]),
                "seeds": len(mine),
            }
        out[task] = {"target_task_loss": target, "original_task_loss": base["task_loss"], "methods": rows}
    return out


def fmt(stat, digits: int = 2, unit: str = "") -> str:
    mean, sd, n = stat
    if mean is None:
        return "n/a"
    return f"{mean:+.{digits}f}{unit}" + (f" ± {sd:.{digits}f}" if n > 1 else "")


def table(summary: dict, trainable: dict[str, int]) -> str:
    lines = []
    for task, s in summary.items():
        target = s["target_task_loss"]
        shown = f"{target:.3f}" if target is not None else "none"
        lines += [
            f"\n{task}: original held-out task loss {s['original_task_loss']:.3f}, matched at task loss {shown}",
            "| method | trainable | best task loss | wiki PPL change at match | cloze Δ seen (nats) | "
            "cloze Δ unseen (nats) | seen − unseen | seeds matched |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, r in s["methods"].items():
            best = r["best_task_loss"]
            best_shown = f"{best[0]:.3f}" + (f" ± {best[1]:.3f}" if best[2] > 1 else "")
            lines.append(
                f"| {method} | {trainable.get(method, 0):,} | {best_shown} | {fmt(r['ppl_change'], 2, '%')} | "
                f"{fmt(r['seen_change'], 3)} | {fmt(r['unseen_change'], 3)} | {fmt(r['seen_minus_unseen'], 3)} | "
                f"{r['matched_seeds']}/{r['seeds']} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- measuring (the model work)


def probe_items(settings: Settings, tokenizer) -> dict[str, list]:
    """Cloze samples: "seen" from the calibration windows themselves (decoded), "unseen" from
    held-out articles; each (prefix ids + word ids, prefix length), at most ``probe_items`` each,
    taken round-robin over windows/articles so that no one article dominates."""
    from svdadapt.assets import wiki_articles
    from svdadapt.data import Sample
    from svdadapt.data.cloze import cloze_item, sentences
    from svdadapt.data.options import DataOptions

    def clean(s: str) -> bool:
        return 8 <= len(s.split()) <= 40 and not any(c in s for c in "|=[]{}<>*#")

    windows = DataOptions(data="wiki", samples=settings.calib_samples, seq_len=settings.calib_seq_len)
    seen_texts = [tokenizer.decode(s.input_ids, skip_special_tokens=True) for s in windows.load_samples(tokenizer, 0)]
    seen = [[s for s in sentences(t)[1:-1] if clean(s)] for t in seen_texts]  # whole sentences only
    unseen = [[s for s in sentences(a.text) if clean(s)] for a in wiki_articles() if a.heldout]

    def take(groups: list[list[str]]) -> list:
        items = []
        for group in itertools.zip_longest(*groups):
            for sentence in group:
                item = cloze_item(sentence) if sentence else None
                if item is not None and len(items) < settings.probe_items:
                    prefix = tokenizer(item.before, add_special_tokens=False)["input_ids"]
                    word = tokenizer(" " + item.word, add_special_tokens=False)["input_ids"]
                    items.append(Sample(prefix + word, len(prefix)))
        return items

    return {"seen": take(seen), "unseen": take(unseen)}


def task_items(settings: Settings, tokenizer) -> dict[str, list]:
    from svdadapt.data import make_samples, resolve

    return {
        task: make_samples(resolve(heldout), tokenizer, settings.task_eval_items, settings.max_length, seed=0)
        for task, heldout in TASKS.items()
        if task in settings.tasks
    }


def measure(model, tokenizer, probes: dict, tasks: dict, windows, which: list[str]) -> dict:
    """Task loss of each task in ``which``, wiki perplexity and the cloze log-likelihoods."""
    from svdadapt.evaluate.likelihood import response_logprobs
    from svdadapt.evaluate.perplexity import perplexity

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    found = {"task_loss": {}}
    for task in which:
        samples = tasks[task]
        logp = response_logprobs(model, samples, pad, batch_size=8)
        found["task_loss"][task] = -float(logp.sum()) / sum(len(s.input_ids) - s.prompt_len for s in samples)
    found["ppl"] = perplexity(model, windows, batch_size=4, progress=False).perplexity
    for side, samples in probes.items():
        found[f"cloze_{side}"] = float(response_logprobs(model, samples, pad, batch_size=8).mean())
    return found


def relative(found: dict, original: dict, task: str) -> dict:
    return {
        "task_loss": found["task_loss"][task],
        "ppl": found["ppl"],
        "ppl_change": 100 * (found["ppl"] / original["ppl"] - 1),
        "seen_change": found["cloze_seen"] - original["cloze_seen"],
        "unseen_change": found["cloze_unseen"] - original["cloze_unseen"],
    }


# ---------------------------------------------------------------- the study


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def stores(settings: Settings, out: Path) -> dict[str, Path]:
    from svdadapt.commands import CalibrateOptions, calibrate
    from svdadapt.data.options import DataOptions

    wanted = {"wiki": ("wiki", settings.calib_samples, settings.calib_seq_len)}
    if IPA in settings.methods:
        wanted |= {f"ipa-{t}": (t, settings.ipa_samples, settings.max_length) for t in settings.tasks}
    found = {}
    for name, (data, samples, seq_len) in wanted.items():
        t = time.monotonic()
        calibrate(
            CalibrateOptions(
                model=settings.model, out=str(out / "covariances" / name), device=settings.device, resume=True,
                source=DataOptions(data=data, samples=samples, seq_len=seq_len, batch_size=8),
            ),
            progress=False,
        )  # fmt: skip
        log(f"calibrated {name} ({samples} samples of {data}) in {time.monotonic() - t:.0f} s")
        found[name] = out / "covariances" / name
    return found


def build_all(settings: Settings, builds: dict, covs: dict[str, Path], out: Path) -> dict[str, Path]:
    from svdadapt.build.options import AdapterOptions
    from svdadapt.commands import BuildOptions, build
    from svdadapt.methods import get_method
    from svdadapt.runs import Run

    runs = {}
    for key, (name, task, seed) in builds.items():
        run_dir = out / "runs" / "built" / key.replace("#", "-").replace("@", "-")
        needs = get_method(name).needs
        store = covs[f"ipa-{task}"] if name == IPA else covs["wiki"]
        if not ((run_dir / "run.json").is_file() and Run.open(run_dir).meta.get("stage") == "built"):
            t = time.monotonic()
            adapter = AdapterOptions(
                method=name, rank=settings.rank, alpha=float(settings.rank),
                covariances=str(store) if needs else None,
            )  # fmt: skip
            build(
                BuildOptions(model=settings.model, out=str(run_dir), adapter=adapter, device=settings.device,
                             seed=seed, overwrite=True),
                progress=False,
            )  # fmt: skip
            log(f"built {key} in {time.monotonic() - t:.0f} s")
        runs[key] = run_dir
    return runs


def trainable_count(run_dir: Path) -> int:
    from svdadapt.runs import Run

    return sum(a.trainable_parameters for a in Run.open(run_dir).adapters().layers.values())


def train_one(settings: Settings, job: Job, built: Path, out: Path) -> dict:
    from svdadapt.commands import TrainOptions, train

    opts = TrainOptions.of(
        run=str(built), out=str(out), overwrite=True, task="sft", data=job.task, max_length=settings.max_length,
        eval_samples=8, max_steps=settings.steps, epochs=1000.0, batch_size=settings.batch_size,
        module_lr=job.lr, warmup_ratio=0.1, schedule="cosine", order="length", seed=job.seed,
        logging_steps=max(1, settings.steps // 4), device=settings.device,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its log dicts without a progress bar
        results = train(opts, progress=False).results
    return {"train_seconds": results["seconds"], "steps": results["steps"], "train_loss": results["train_loss"],
            "train_eval_loss": (results["history"] or [{}])[-1].get("loss")}  # fmt: skip


def load(target: str, settings: Settings, initial: bool = False):
    from svdadapt import backend
    from svdadapt.commands.evaluate import load_target

    return load_target(target, backend.resolve_device(settings.device), initial)[0]


def run_study(settings: Settings, out: Path, targets: dict, keep_runs: bool) -> dict:
    from svdadapt.atomic import write_json
    from svdadapt.evaluate.perplexity import evaluation_windows
    from svdadapt.methods import Base, get_method

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "results.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state and state.get("settings") != asdict(settings):
        sys.exit(f"{state_file} holds results of other settings; use another --out or remove it")
    state.setdefault("settings", asdict(settings))
    points: dict[str, dict] = state.setdefault("points", {})
    random = {m: random_init(m) for m in settings.methods}
    jobs, builds = plan(settings, random)
    sizes = f"{len(settings.methods)} methods × {len(settings.lrs)} lrs × {len(settings.seeds)} seeds"
    log(f"{len(jobs)} trainings ({sizes} × {len(settings.tasks)} tasks), {len(builds)} builds; {len(points)} done")
    covs = stores(settings, out)
    original_model = load(settings.model, settings)
    tok = original_model.tokenizer
    windows = evaluation_windows("wiki-heldout", tok, settings.eval_seq_len, settings.eval_windows)
    probes, tasks = probe_items(settings, tok), task_items(settings, tok)
    log(f"probe: {len(probes['seen'])} seen / {len(probes['unseen'])} unseen cloze items; "
        f"task eval items: {', '.join(f'{k} {len(v)}' for k, v in tasks.items())}")  # fmt: skip
    if "original" not in state:
        state["original"] = measure(original_model.model, tok, probes, tasks, windows, settings.tasks)
    original = state["original"]
    del original_model
    log(f"original: {json.dumps(original)}")
    runs = build_all(settings, builds, covs, out)
    state["trainable"] = {m: trainable_count(runs[build_key(m, settings.tasks[0], settings.seeds[0], random[m])])
                          for m in settings.methods}  # fmt: skip
    inits = state.setdefault("inits", {})
    for name in settings.methods:  # truncated bases are not the original at init: measure them
        if get_method(name).base is Base.TRUNCATED and name not in inits:
            loaded = load(str(runs[build_key(name, "", settings.seeds[0], random[name])]), settings, initial=True)
            found = measure(loaded.model, tok, probes, tasks, windows, settings.tasks)
            inits[name] = {t: relative(found, original, t) for t in settings.tasks}
            del loaded
            log(f"{name} at init: {json.dumps(inits[name])}")
    write_json(state_file, state)
    todo = [j for j in jobs if j.key not in points]
    t0 = time.monotonic()
    for i, job in enumerate(todo):
        run_dir = out / "runs" / "trained" / job.key.replace("/", "-")
        t = time.monotonic()
        trained = train_one(settings, job, runs[build_key(job.method, job.task, job.seed, random[job.method])], run_dir)
        loaded = load(str(run_dir), settings)
        found = relative(measure(loaded.model, tok, probes, tasks, windows, [job.task]), original, job.task)
        del loaded
        points[job.key] = {**asdict(job), **trained, **found, "seconds": time.monotonic() - t}
        write_json(state_file, state)
        if not keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
        eta = (time.monotonic() - t0) / (i + 1) * (len(todo) - i - 1)
        log(f"{job.key}: task loss {found['task_loss']:.3f}, wiki PPL {found['ppl_change']:+.2f}%, cloze Δ seen "
            f"{found['seen_change']:+.3f} unseen {found['unseen_change']:+.3f} ({time.monotonic() - t:.0f} s; "
            f"{i + 1}/{len(todo)}, ~{eta / 60:.0f} min left)")  # fmt: skip
    summary = summarize(list(points.values()), inits, original, targets)
    state["summary"] = summary
    state["seconds"] = state.get("seconds", 0) + time.monotonic() - started
    write_json(state_file, state)
    return state


def combine(dirs: list[Path], out: Path, targets: dict) -> dict:
    """One study from runs of the same settings on different tasks (``--tasks`` split across runs or
    machines): points, originals and inits joined, every task summarised as a single run would."""
    from svdadapt.atomic import write_json

    missing = [d for d in dirs if not (d / "results.json").is_file()]
    if missing:
        sys.exit(f"{missing[0]} holds no results.json: give the --out directories of finished runs")
    states = [json.loads((d / "results.json").read_text()) for d in dirs]
    for d, s in zip(dirs, states):  # every training its settings call for, measured
        settings = Settings(**s["settings"])
        wanted = [j.key for j in plan(settings, {m: random_init(m) for m in settings.methods})[0]]
        left = [k for k in wanted if k not in s["points"]]
        if left:
            done = len(wanted) - len(left)
            sys.exit(f"{d} is unfinished: {done} of {len(wanted)} trainings measured (not {left[0]}); run it again "
                     "with the same settings and --out to finish it")  # fmt: skip
    first = states[0]
    same = lambda s: {k: v for k, v in s["settings"].items() if k != "tasks"}  # noqa: E731
    for d, s in zip(dirs, states):
        if same(s) != same(first):
            sys.exit(f"{d}/results.json was run with other settings than {dirs[0]}/results.json (tasks aside)")
        for key in ("ppl", "cloze_seen", "cloze_unseen"):  # the same model on the same text
            if abs(s["original"][key] - first["original"][key]) > 1e-6 * abs(first["original"][key]):
                sys.exit(f"{d}: the original model's {key} differs from {dirs[0]}'s: not the same study")
    tasks = [t for s in states for t in s["settings"]["tasks"]]
    if len(set(tasks)) != len(tasks):
        sys.exit(f"a task is in more than one of {', '.join(map(str, dirs))}: combine runs of different tasks")
    points = {k: v for s in states for k, v in s["points"].items()}
    original = {**first["original"], "task_loss": {t: v for s in states for t, v in s["original"]["task_loss"].items()}}
    inits: dict[str, dict] = {}
    for s in states:
        for method, by_task in s.get("inits", {}).items():
            inits.setdefault(method, {}).update(by_task)
    state = {
        "settings": {**first["settings"], "tasks": tasks}, "points": points, "original": original,
        "trainable": first["trainable"], "inits": inits, "combined_from": [str(d) for d in dirs],
        "summary": summarize(list(points.values()), inits, original, targets),
        "seconds": sum(s.get("seconds", 0) for s in states),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", state)
    return state


PANELS = (  # (measure, y label, symlog when it spans more than this)
    ("ppl_change", "held-out Wikipedia perplexity change (%)", 50.0),
    ("seen_change", "cloze log-lik. change, calibration sentences (nats)", 5.0),
    ("unseen_change", "cloze log-lik. change, held-out articles (nats)", 5.0),
)


def _panel(ax, state: dict, task: str, key: str, ylabel: str, wide: float, colors: dict) -> None:
    import matplotlib.ticker

    s, points = state["summary"][task], [p for p in state["points"].values() if p["task"] == task]
    original_loss, target = s["original_task_loss"], s["target_task_loss"]
    shown = {m for m, r in s["methods"].items() if r[key][0] is not None}  # the axes fit these; others may be off
    xs_all, ys_all = [original_loss], [0.0]
    for i, (method, r) in enumerate(s["methods"].items()):
        mine = [p for p in points if p["method"] == method]
        start = state.get("inits", {}).get(method, {}).get(task, {"task_loss": original_loss, key: 0.0})
        for seed in sorted({p["seed"] for p in mine}):
            trail = sorted((p for p in mine if p["seed"] == seed), key=lambda p: p["lr"])
            xs = [start["task_loss"], *(p["task_loss"] for p in trail)]
            ys = [start[key], *(p[key] for p in trail)]
            if method in shown:
                xs_all, ys_all = xs_all + xs, ys_all + ys
            ax.plot(xs, ys, "-o", color=colors[method], alpha=0.35, markersize=3, linewidth=0.8)
        mean, sd, n = r[key]
        if mean is not None:
            x = target + (i - (len(s["methods"]) - 1) / 2) * 0.008 * (max(xs_all) - min(xs_all) or 1.0)
            ax.errorbar([x], [mean], yerr=[sd or 0], fmt="D", color=colors[method], markersize=7, capsize=3,
                        label=f"{method} ({n})")  # fmt: skip
        else:
            ax.plot([], [], "D", color=colors[method], label=f"{method} (not matched; may be off the axes)")
    if target is not None:
        ax.axvline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("held-out task loss (lower: learned more)")
    ax.set_ylabel(ylabel, fontsize=8)
    (x0, x1), (y0, y1) = (min(xs_all), max(xs_all)), (min(ys_all), max(ys_all))
    ax.set_xlim(x0 - 0.06 * (x1 - x0 or 1), x1 + 0.06 * (x1 - x0 or 1))
    ax.set_ylim(y0 - 0.08 * (y1 - y0 or 1), y1 + 0.08 * (y1 - y0 or 1))
    if max(map(abs, ys_all)) > wide:  # e.g. a method that forgets by orders of magnitude more
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3)


def plot(state: dict, path: Path) -> Path | None:
    """One column per task; rows: perplexity change, cloze change on seen and on unseen sentences,
    each against the held-out task loss (every point thin, the matched mean ± sd as a diamond)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = list(state["summary"])
    fig, axes = plt.subplots(len(PANELS), len(tasks), figsize=(6.4 * len(tasks), 3.6 * len(PANELS)), dpi=100,
                             squeeze=False)  # fmt: skip
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    for col, task in enumerate(tasks):
        for row, (key, ylabel, wide) in enumerate(PANELS):
            _panel(axes[row][col], state, task, key, ylabel, wide, colors)
        axes[0][col].set_title(f"{task}: forgetting against task learning")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


OVERRIDES = (
    "model", "rank", "steps", "batch_size", "max_length", "calib_samples", "calib_seq_len", "ipa_samples",
    "eval_windows", "eval_seq_len", "probe_items", "task_eval_items", "device",
)  # fmt: skip


def parse_settings(args: argparse.Namespace) -> Settings:
    settings = replace(QUICK) if args.quick else Settings()
    for key in OVERRIDES:
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    if args.methods:
        settings.methods = [m for m in args.methods.split(",") if m]
        unknown = [m for m in settings.methods if m not in METHODS]
        if unknown:
            sys.exit(f"unknown method {unknown[0]}; choose from {', '.join(METHODS)}")
    if args.tasks:
        settings.tasks = [t for t in args.tasks.split(",") if t]
        if any(t not in TASKS for t in settings.tasks):
            sys.exit(f"tasks are {', '.join(TASKS)}")
    if args.lrs:
        settings.lrs = sorted(float(x) for x in args.lrs.split(","))
    if args.seeds:
        settings.seeds = [int(x) for x in args.seeds.split(",")]
    return settings


def parse_targets(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    """``--target-loss TASK=LOSS`` values, each checked: a task of the study and a positive loss."""
    targets = {}
    for item in items:
        task, _, text = item.partition("=")
        try:
            loss = float(text)
        except ValueError:
            loss = float("nan")
        if task not in TASKS or not loss > 0 or loss == float("inf"):
            parser.error(f"--target-loss {item!r}: give TASK=LOSS, TASK one of {', '.join(TASKS)}, LOSS a positive "
                         "held-out task loss")  # fmt: skip
        targets[task] = loss
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: all 9 methods, rank 4, 1 seed, 1 lr")
    parser.add_argument("--out", default="retention-study", help="stores, runs, results.json and the PNG")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--tasks", help=f"comma-separated subset of {', '.join(TASKS)}")
    parser.add_argument("--lrs", help="learning rates, comma-separated")
    parser.add_argument("--seeds", help="seeds, comma-separated")
    parser.add_argument("--target-loss", action="append", default=[], metavar="TASK=LOSS",
                        help="match at this held-out task loss instead of the worst method's best")  # fmt: skip
    parser.add_argument("--keep-runs", action="store_true", help="keep every trained run (disk: one adapter each)")
    parser.add_argument("--combine", metavar="DIR,DIR", help="no training: join the results of runs of the same "
                        "settings on different --tasks into --out (table, PNG, --json)")  # fmt: skip
    for key in OVERRIDES:
        parser.add_argument("--" + key.replace("_", "-"), type=str if key in ("model", "device") else int)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for every run loaded
    settings = parse_settings(args)
    targets = parse_targets(parser, args.target_loss)
    out = Path(args.out).expanduser()
    if args.combine:
        given = [f"--{k.replace('_', '-')}" for k in ("quick", "methods", "tasks", "lrs", "seeds", "keep_runs",
                                                      *OVERRIDES) if getattr(args, k) not in (None, False)]  # fmt: skip
        if given:
            parser.error(f"--combine joins finished runs with their own settings; leave out {', '.join(given)}")
        state = combine([Path(d).expanduser() for d in args.combine.split(",")], out, targets)
    else:
        state = run_study(settings, out, targets, args.keep_runs)
    png = plot(state, out / "retention.png")
    print(table(state["summary"], state["trainable"]))
    print(f"\n{len(state['points'])} trainings; {state['seconds'] / 60:.1f} min in all; plot: {png}")
    if args.json:
        Path(args.json).write_text(json.dumps(state, indent=2) + "\n")


if __name__ == "__main__":
    main()
