"""`svdadapt compress`: the sweep drops exactly the smallest components of the right decomposition,
decomposes each layer once, restores the model, and refuses bad input in one line."""

import csv
import json

import pytest
import torch

import svdadapt.compress.sweep as sweep_module
import svdadapt.decompose as decompose_module
from svdadapt import SvdadaptError
from svdadapt.cli import main
from svdadapt.commands import CompressOptions, compress
from svdadapt.compress import layer_ranks, parse_discards, run_sweep
from svdadapt.decompose import Take
from svdadapt.evaluate import PerplexityResult, evaluation_windows, perplexity
from svdadapt.models import load_model
from svdadapt.store import CovarianceStore
from svdadapt.targets import find_targets, weight_matrix

from ..helpers import bad


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    from svdadapt.assets import news_text

    root = tmp_path_factory.mktemp("texts")
    (root / "calib.txt").write_text(news_text()[:8000])
    (root / "eval.txt").write_text(news_text()[8000:14000])
    return root


@pytest.fixture(scope="module")
def covs(tmp_path_factory, tiny_dirs, texts):
    out = tmp_path_factory.mktemp("covs") / "store"
    args = ["calibrate", "--model", str(tiny_dirs["llama"]), "--data", str(texts / "calib.txt"), "--samples", "8",
            "--seq-len", "32", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture
def tiny(tiny_dirs, texts):
    loaded = load_model(str(tiny_dirs["llama"]))
    windows = evaluation_windows(str(texts / "eval.txt"), loaded.tokenizer, seq_len=32, max_windows=6)
    return loaded.model, find_targets(loaded.model), windows


def snapshot(modules):
    return {n: weight_matrix(m).detach().clone() for n, m in modules.items()}


def textbook_bottom(W, K, r):
    """Float64 textbook: SVD of W·K, V = K⁻¹Ĥ; the part of W spanned by the r smallest components."""
    U, S, Vh = torch.linalg.svd(W @ K, full_matrices=False)
    V = torch.linalg.solve(K, Vh.T)
    return (U[:, -r:] * S[-r:]) @ V[:, -r:].T


def context_matrix(decomposition, store, name, in_f):
    if decomposition == "plain":
        return torch.eye(in_f, dtype=torch.float64)
    if decomposition == "asvd":
        return torch.diag(store.mean_abs(name).double().clamp_min(0) ** 0.5 + 1e-6)
    C = store.covariance(name).double()
    return C + 0.01 * C.diagonal().mean() * torch.eye(in_f, dtype=torch.float64)


# ------------------------------------------------------------------ --discard


def test_counts_fractions_and_percentages_parse():
    points = parse_discards("0, 16,0.1,25%,0.5,16,0.0")
    assert [p.text for p in points] == ["0", "16", "0.1", "25%", "0.5"]  # repeats (and 0.0 = 0) kept once
    assert [(p.count, p.fraction) for p in points] == [(0, None), (16, None), (None, 0.1), (None, 0.25), (None, 0.5)]
    assert [p.rank(192) for p in points] == [0, 16, 19, 48, 96]
    assert parse_discards("2.5e-1")[0].fraction == 0.25
    ranks = layer_ranks(points, {"a": 192, "b": 576})
    assert [r["b"] for r in ranks] == [0, 16, 58, 144, 288]


@pytest.mark.parametrize(
    "text, message",
    [
        ("-1", "negative"),
        ("0.1,-0.2", "negative"),
        ("1.0", "not below 1"),
        ("100%", "not below 1"),
        ("ten", "is not a count"),
        ("0,,0.5", "empty item"),
    ],
)
def test_bad_discard_items(text, message):
    with pytest.raises(SvdadaptError, match=message):
        parse_discards(text)


def test_a_count_must_leave_a_component_in_every_layer():
    with pytest.raises(SvdadaptError, match="drops 32 components of k, which has only min.out, in. = 32"):
        layer_ranks(parse_discards("8,32"), {"q": 64, "k": 32})
    with pytest.raises(SvdadaptError, match="drops 32 components"):
        layer_ranks(parse_discards("0.99"), {"k": 32})  # rounds up to every component


# ------------------------------------------------------------------ the sweep


def test_each_point_is_w_minus_the_textbook_smallest_components(tiny, covs, monkeypatch):
    """Weights seen at every evaluation, for every decomposition, against a float64 textbook SVD; the
    larger point comes first, so a model not restored in between would fail the smaller one."""
    model, modules, windows = tiny
    store = CovarianceStore.load(covs)
    original = snapshot(modules)
    seen = []

    def fake_perplexity(model, windows, batch_size=1, progress=True):
        seen.append(snapshot(modules))
        return PerplexityResult(windows.source, float(len(seen)), 0.0, 1, 1, 1)

    monkeypatch.setattr(sweep_module, "perplexity", fake_perplexity)
    points = parse_discards("0.5,0,8")
    sweep = run_sweep(model, modules, ["plain", "asvd", "context"], points, windows, store, progress=False)
    assert len(seen) == 1 + 3 * 2  # the base once; r = 0 is the base model's measurement
    assert all(torch.equal(seen[0][n], original[n]) for n in modules)
    assert [p.perplexity for p in sweep.points if p.discard == "0"] == [1.0] * 3
    ks = {n: min(weight_matrix(m).shape) for n, m in modules.items()}
    ranks = dict(zip(["0.5", "8"], [layer_ranks([p], ks)[0] for p in points if not p.is_zero]))
    measured = iter(seen[1:])
    for decomposition in ("plain", "asvd", "context"):
        for discard in ("0.5", "8"):
            weights = next(measured)
            for name in modules:
                W = original[name].double()
                K = context_matrix(decomposition, store, name, W.shape[1])
                expected = W - textbook_bottom(W, K, ranks[discard][name])
                err = (weights[name].double() - expected).abs().max() / W.abs().max()
                assert err < 2e-6, (decomposition, discard, name, err)
    assert all(torch.equal(weight_matrix(m), original[n]) for n, m in modules.items())  # restored at the end
    assert sweep.dampings["context"] == [0.01] and sweep.dampings["plain"] == []


def test_each_layer_is_decomposed_once_per_decomposition(tiny, covs, monkeypatch):
    model, modules, windows = tiny
    calls = []
    real = decompose_module.factorize

    def counting(W, make_context, name="layer", want=None):
        calls.append((name, want))
        return real(W, make_context, name, want)

    monkeypatch.setattr(decompose_module, "factorize", counting)
    monkeypatch.setattr(sweep_module, "perplexity", lambda *a, **k: PerplexityResult("x", 1.0, 0.0, 1, 1, 1))
    names = ["context", "asvd", "plain"]
    run_sweep(
        model, modules, names, parse_discards("0,2,0.1,0.25"), windows, CovarianceStore.load(covs), progress=False
    )
    assert len(calls) == 3 * len(modules)
    assert sorted(calls) == sorted(
        (n, (Take.BOTTOM, max(2, round(0.25 * min(weight_matrix(m).shape))))) for n, m in modules.items() for _ in names
    )


def test_r0_reproduces_the_base_perplexity_and_the_model_is_restored(tiny, tiny_dirs, covs):
    model, modules, windows = tiny
    sweep = run_sweep(model, modules, ["context", "plain"], parse_discards("0,0.25"), windows,
                      CovarianceStore.load(covs), progress=False)  # fmt: skip
    fresh = load_model(str(tiny_dirs["llama"])).model
    base = perplexity(fresh, windows, progress=False).perplexity
    zero = [p for p in sweep.points if p.discard == "0"]
    assert [p.perplexity for p in zero] == [base, base] and sweep.base.perplexity == base
    assert perplexity(model, windows, progress=False).perplexity == base  # restored after the sweep
    dropped = [p for p in sweep.points if p.discard == "0.25"]
    assert all(p.perplexity != base and p.seconds > 0 for p in dropped)
    assert dropped[0].share == pytest.approx(0.25, abs=0.01) and dropped[0].ranks == "8/16"


# ------------------------------------------------------------------ the command


def cli(tiny_dirs, texts, out, **extra):
    args = ["compress", "--model", str(tiny_dirs["llama"]), "--eval", str(texts / "eval.txt"), "--seq-len", "32",
            "--max-windows", "3", "--out", str(out), "--device", "cpu"]  # fmt: skip
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def test_compress_from_the_command_line(capsys, tiny_dirs, texts, covs, tmp_path):
    out = tmp_path / "sweep"
    assert main(cli(tiny_dirs, texts, out, covariances=covs, discard="0,4,0.25")) == 0
    stdout = capsys.readouterr().out
    assert "compression sweep" in stdout and "context" in stdout and "25%" in stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["decomposition"], r["discard"]) for r in rows] == [
        (d, p) for d in ("context", "asvd", "plain") for p in ("0", "4", "0.25")
    ]
    assert len({r["perplexity"] for r in rows if r["discard"] == "0"}) == 1
    meta = json.loads((out / "results.json").read_text())
    assert meta["format"] == "svdadapt.compress" and meta["eval"]["windows"] == 3 and len(meta["points"]) == 9
    assert (out / "perplexity_vs_discarded.png").stat().st_size > 1000
    # plain needs no store; an earlier sweep in --out is replaced
    assert main(cli(tiny_dirs, texts, out, decomposition="plain", discard="0,1")) == 0
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2


def test_a_further_text_is_measured_at_every_point_as_its_own_sweep_would(capsys, tiny_dirs, texts, tmp_path):
    """--also-eval: each point's perplexity on the further text equals that of a sweep evaluating
    only that text (same windows, same weights), in the CSV, the JSON and the printed table."""
    both, alone = tmp_path / "both", tmp_path / "alone"
    calib = str(texts / "calib.txt")
    assert main(cli(tiny_dirs, texts, both, decomposition="plain", discard="0,2", also_eval=calib)) == 0
    assert f"on {calib}:" in capsys.readouterr().out
    args = cli(tiny_dirs, texts, alone, decomposition="plain", discard="0,2")
    args[args.index("--eval") + 1] = calib
    assert main(args) == 0
    rows = list(csv.DictReader((both / "results.csv").open()))
    reference = [r["perplexity"] for r in csv.DictReader((alone / "results.csv").open())]
    assert [r[f"perplexity:{calib}"] for r in rows] == reference and rows[0]["perplexity"] != reference[0]
    meta = json.loads((both / "results.json").read_text())
    assert meta["also_eval"][calib]["windows"] == 3 and meta["base_also"][calib]["window_nll"]
    assert [p["also"][calib] for p in meta["points"]] == [
        p["perplexity"] for p in json.loads((alone / "results.json").read_text())["points"]
    ]


def test_an_interrupted_sweep_leaves_nothing_behind(tiny_dirs, texts, tmp_path, monkeypatch):
    calls = []

    def failing(model, windows, batch_size=1, progress=True):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return PerplexityResult(windows.source, 1.0, 0.0, 1, 1, 1)

    monkeypatch.setattr(sweep_module, "perplexity", failing)
    opts = CompressOptions.of(model=str(tiny_dirs["llama"]), out=str(tmp_path / "sweep"), decomposition="plain",
                           discard="0,1,2,3", eval=str(texts / "eval.txt"), seq_len=32, device="cpu")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        compress(opts, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def foreign_store(covs, tmp_path_factory):
    """The tiny llama's store, relabelled as another model's."""
    import shutil

    other = tmp_path_factory.mktemp("foreign") / "store"
    shutil.copytree(covs, other)
    meta = json.loads((other / "store.json").read_text())
    meta["model"]["fingerprint"] = "0" * 64
    (other / "store.json").write_text(json.dumps(meta))
    return other


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"decomposition": "context,svd"}, "unknown decomposition 'svd'; did you mean 'asvd'? choose one of plain"),
        ({"decomposition": "plain", "discard": "0,1.5"}, "not below 1"),
        ({"decomposition": "plain", "discard": "0,-2"}, "negative"),
        ({"decomposition": "plain", "discard": "32"}, "drops 32 components of model.layers.0.self_attn.k_proj"),
        ({"decomposition": "context"}, "the context decomposition needs calibration statistics"),
        ({"decomposition": "plain,asvd"}, "the asvd decomposition needs calibration statistics"),
        ({"covariances": "FOREIGN"}, "recalibrate on this model"),
        ({"covariances": "NOWHERE"}, "is not a covariance store"),
        ({"decomposition": "plain", "max_windows": 0}, "--max-windows must be positive"),
        ({"decomposition": "plain", "seq_len": 4096}, "beyond this model's limit"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tiny_dirs, texts, foreign_store, tmp_path, extra, message):
    paths = {"FOREIGN": foreign_store, "NOWHERE": tmp_path}
    extra = {k: paths.get(v, v) for k, v in extra.items()}
    out = tmp_path / "sweep"
    line = bad(capsys, *cli(tiny_dirs, texts, out, **extra))
    assert message in line and "inputs" not in line  # only decompositions of all of W can be swept
    assert not out.exists()


def test_out_that_is_not_a_sweep(capsys, tiny_dirs, texts, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    assert "is not an earlier compression sweep" in bad(capsys, *cli(tiny_dirs, texts, tmp_path, decomposition="plain"))
    assert (tmp_path / "mine.txt").read_text() == "keep"


# ------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_context_beats_asvd_beats_plain_on_real_smollm2():
    """CorDA's Figure 2 on the real SmolLM2: 25% of every layer of its first 2 decoder blocks dropped."""
    from svdadapt import collect_covariances
    from svdadapt.data import make_batches, make_samples, resolve

    loaded = load_model("default")
    model, targets = loaded.model, r"re:model\.layers\.[01]\..*"
    samples = make_samples(resolve("wiki"), loaded.tokenizer, num_samples=16, seq_len=128, seed=0)
    store = collect_covariances(model, make_batches(samples, 8, loaded.tokenizer.pad_token_id), targets)
    windows = evaluation_windows("wiki-heldout", loaded.tokenizer, seq_len=256, max_windows=4)
    modules = find_targets(model, targets)
    assert len(modules) == 14
    sweep = run_sweep(model, modules, ["context", "asvd", "plain"], parse_discards("0.25"), windows, store,
                      batch_size=4, progress=False)  # fmt: skip
    ppl = {p.decomposition: p.perplexity for p in sweep.points}
    assert sweep.base.perplexity < ppl["context"] < ppl["asvd"] < ppl["plain"], ppl
