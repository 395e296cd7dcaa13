"""Task metrics: polarity accuracy by label likelihood, GLUE metrics of a trained classification run,
and a run evaluating exactly as its merged model does."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from svdadapt.assets import polarity_split, tiny_model, tiny_tokenizer
from svdadapt.cli import main
from svdadapt.data import Sample
from svdadapt.data.sources import POLARITY_PROMPT
from svdadapt.data.tasks import dump_rows
from svdadapt.evaluate.likelihood import choice_scores, label_likelihood_accuracy, polarity_choices, response_scores


def hand_scores(model, tok, template, count):
    """(count, 2) Σ log p(response tokens | prompt) for "positive"/"negative", one unpadded pass each."""
    scores = []
    for sentence, _ in polarity_split(True)[:count]:
        user = POLARITY_PROMPT.format(review=sentence)
        row = []
        for label in ("positive", "negative"):
            if template == "plain":
                prompt, response = f"### Instruction:\n{user}\n\n### Response:\n", f"{label}</s>"
            else:  # the tiny tokenizer's chat template
                prompt, response = f"<s>user\n{user}</s>\n<s>assistant\n", f"{label}</s>\n"
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = p + tok(response, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)  # (L, V)
            row.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(p), len(ids))))
        scores.append(row)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_polarity_accuracy_by_label_likelihood_matches_a_hand_computation(template):
    model, tok = tiny_model("llama", seed=5).double(), tiny_tokenizer()
    examples = polarity_choices(limit=6)
    expected = hand_scores(model, tok, template, 6)
    scores = choice_scores(model, tok, examples, template, batch_size=4)  # padded batches of 4
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-9)
    gold = torch.tensor([0 if y == "positive" else 1 for _, y in polarity_split(True)[:6]])
    result = label_likelihood_accuracy(model, tok, examples, template, batch_size=3)
    assert result["accuracy"] == pytest.approx(float((expected.argmax(1) == gold).double().mean()))
    assert result["examples"] == 6 and result["scoring"] == "label likelihood" and result["template"] == template


def test_response_scores_give_greedy_answers_and_rival_tokens_as_one_unpadded_pass_does():
    """Per sample, by hand in float64 on one unpadded pass: Σ log p of the response, whether every
    response token is the argmax, and the rivals' log p where the response starts; batched with
    padding (batch 3 of 5 samples of different lengths) the same to 1e-9."""
    model = tiny_model("llama", seed=5).double()
    g = torch.Generator().manual_seed(0)
    samples = []
    for length, prompt_len in ((9, 6), (12, 11), (7, 3), (10, 5), (6, 4)):
        ids = torch.randint(3, 512, (length,), generator=g).tolist()
        samples.append(Sample(ids, prompt_len))
    with torch.no_grad():  # one greedy answer, so that "greedy" is true somewhere: its argmax continuation
        ids = samples[0].input_ids[:6]
        for _ in range(3):
            ids = ids + [int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())]
    samples[0] = Sample(ids, 6)
    rivals = [5, 17, 300]
    found = response_scores(model, samples, pad_id=0, batch_size=3, rivals=rivals)
    for i, s in enumerate(samples):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([s.input_ids])).logits[0].double(), -1)  # (L, V)
        steps = range(s.prompt_len, len(s.input_ids))
        assert float(found.logprob[i]) == pytest.approx(
            sum(float(logp[t - 1, s.input_ids[t]]) for t in steps), abs=1e-9
        )
        assert bool(found.greedy[i]) == all(int(logp[t - 1].argmax()) == s.input_ids[t] for t in steps)
        torch.testing.assert_close(found.first[i], logp[s.prompt_len - 1, rivals], rtol=1e-9, atol=1e-9)
    assert bool(found.greedy[0])


@pytest.fixture(scope="module")
def mrpc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mrpc")
    pairs = polarity_split(False)
    rows = [{"sentence1": a[0], "sentence2": b[0], "label": i % 2} for i, (a, b) in enumerate(zip(pairs, pairs[40:]))]
    dump_rows(rows[:8], d / "train.jsonl")
    dump_rows(rows[8:20], d / "validation.jsonl")
    return d


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_dirs, mrpc_dir):
    from svdadapt.commands import TrainOptions, train

    out = tmp_path_factory.mktemp("cls") / "run"
    opts = TrainOptions.of(
        out=str(out), task="glue:mrpc", model=str(tiny_dirs["bert"]), method="pissa", rank=4,
        data_dir=str(mrpc_dir), max_steps=2, batch_size=4, max_length=64, device="cpu", module_lr=1e-2,
    )  # fmt: skip
    train(opts, progress=False)
    assert main(["merge", str(out), "--out", str(out.parent / "merged")]) == 0
    return out


def test_glue_metrics_of_a_trained_run_match_its_merged_model_by_hand(cls_run, mrpc_dir, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert main(["eval", str(cls_run), "--tasks", "glue:mrpc", "--data-dir", str(mrpc_dir), "--device", "cpu"]) == 0
    assert "glue:mrpc" in capsys.readouterr().out
    got = json.loads((cls_run / "eval" / "results.json").read_text())["tasks"]["glue:mrpc"]

    merged = cls_run.parent / "merged"
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    rows = [json.loads(line) for line in (mrpc_dir / "validation.jsonl").read_text().splitlines()]
    with torch.no_grad():
        enc = tok([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], padding=True, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1).numpy()
    labels = np.array([r["label"] for r in rows])
    assert got["examples"] == len(rows) == 12
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert got["f1"] == pytest.approx(f1_score(labels, pred))


def test_classification_run_logits_equal_the_merged_models(cls_run, mrpc_dir):
    from svdadapt.commands.evaluate import load_target
    from svdadapt.data.tasks import CLASSIFICATION_TASKS
    from svdadapt.evaluate.classification import classification_logits, validation_rows
    from svdadapt.models import load_model
    from svdadapt.runs import Run

    task, rows = CLASSIFICATION_TASKS["mrpc"], validation_rows(CLASSIFICATION_TASKS["mrpc"], str(mrpc_dir))
    assert Run.open(cls_run).head_state(), "training should have written the head"
    run_model, about = load_target(str(cls_run), "cpu")
    assert about["kind"] == "run" and about["trained_task"] == "glue:mrpc"
    merged = load_model(str(cls_run.parent / "merged"))
    a = classification_logits(run_model.model, run_model.tokenizer, task, rows, batch_size=5)
    b = classification_logits(merged.model, merged.tokenizer, task, rows, batch_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    base_only = load_model(str(cls_run / "base"))  # the residual base and untrained head: not the same
    c = classification_logits(base_only.model, base_only.tokenizer, task, rows, batch_size=5)
    assert np.abs(a - c).max() > 1e-3


def test_causal_run_evaluates_as_its_merged_model(tiny_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    build = ["build", "--model", tiny_dirs["llama"], "--method", "pissa", "--rank", "4", "--out", run]
    assert main([str(a) for a in build + ["--device", "cpu"]]) == 0
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    common = ["--perplexity", "news", "--seq-len", "32", "--max-windows", "3", "--tasks", "polarity-instruct",
              "--limit", "4", "--device", "cpu"]  # fmt: skip
    results = {}
    for name, target in (("run", run), ("merged", tmp_path / "merged"), ("base", run / "base")):
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(target), *common, "--out", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    capsys.readouterr()
    ppl = {k: r["perplexity"]["news"]["perplexity"] for k, r in results.items()}
    assert ppl["run"] == pytest.approx(ppl["merged"], rel=1e-5)
    assert ppl["base"] != pytest.approx(ppl["run"], rel=1e-3)  # the adapters were in the run's model
    acc = {k: r["tasks"]["polarity-instruct"]["accuracy"] for k, r in results.items()}
    assert acc["run"] == acc["merged"]
    assert results["run"]["target"]["kind"] == "run" and results["merged"]["target"]["kind"] == "model"
