"""Calibration sources: each loader on a small local file of its hub schema, templates, sampling."""

import json

import pytest

from svdadapt import SvdadaptError
from svdadapt.assets import tiny_tokenizer
from svdadapt.data import FieldOptions, make_batches, make_samples, resolve
from svdadapt.data.samples import adds_bos

TEXT = "The quick brown fox jumps over the lazy dog near the river bank. " * 40


def write_rows(path, rows, jsonl=True):
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        path.write_text(json.dumps(rows))
    return path


SCHEMAS = {
    # source name -> (records in the hub schema, expected corpus kind)
    "nqopen": ([{"question": f"who wrote book number {i}?", "answer": ["someone"]} for i in range(60)], "text"),
    "triviaqa": ([{"question": f"which river flows through city {i}?", "answer": {"value": "x"}} for i in range(60)], "text"),
    "wikitext2": ([{"text": f" = Section {i} = \n {TEXT[:200]}"} for i in range(30)], "text"),
    "ptb": ([{"sentence": f"the market fell {i} points in early trading"} for i in range(80)], "text"),
    "metamath": ([{"query": f"What is {i} + {i}?", "response": f"It is {2 * i}.", "type": "GSM"} for i in range(20)], "examples"),
    "codefeedback": ([{"query": f"Write code number {i}", "answer": "print(1)"} for i in range(20)], "examples"),
    "wizardlm": ([{"conversations": [{"from": "human", "value": f"Tell me fact {i}"}, {"from": "gpt", "value": "Sure."}]} for i in range(20)], "examples"),
    "alpaca": ([{"instruction": f"Name color {i}", "input": "" if i % 2 else "context", "output": "blue"} for i in range(20)], "examples"),
}  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_each_hub_source_reads_a_local_file_of_its_schema(name, tmp_path, tok):
    rows, kind = SCHEMAS[name]
    path = write_rows(tmp_path / f"{name}.jsonl", rows)
    corpus = resolve(f"{name}:{path}")
    assert corpus.kind == kind
    samples = make_samples(corpus, tok, num_samples=8, seq_len=24, seed=0)
    assert len(samples) == 8
    if kind == "text":
        assert all(len(s.input_ids) == 24 for s in samples)
    else:
        assert all(0 < s.prompt_len <= len(s.input_ids) <= 24 for s in samples)
    # the same file is also recognised without naming the source
    assert resolve(str(path)).kind == kind


def test_seed_corda_wizardlm_layout_and_json_lists(tmp_path, tok):
    rows = [{"conversation": [{"human": f"q{i}", "assistant": f"a{i}"}]} for i in range(5)]
    corpus = resolve(f"wizardlm:{write_rows(tmp_path / 'w.json', rows, jsonl=False)}")
    text = tok.decode(make_samples(corpus, tok, 3, 64, template="plain")[0].input_ids)
    assert "### Instruction:\nq" in text and "### Response:\na" in text


def test_text_windows_are_reproducible_and_seeded(tmp_path, tok):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    corpus = resolve(str(path))
    a = make_samples(corpus, tok, 5, 16, seed=1)
    b = make_samples(corpus, tok, 5, 16, seed=1)
    c = make_samples(corpus, tok, 5, 16, seed=2)
    assert [s.input_ids for s in a] == [s.input_ids for s in b]
    assert [s.input_ids for s in a] != [s.input_ids for s in c]


def test_bos_is_prepended_when_the_tokenizer_adds_one(tmp_path):
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert adds_bos(tok)
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    samples = make_samples(resolve(str(path)), tok, 3, 12)
    assert all(s.input_ids[0] == tok.bos_token_id and len(s.input_ids) == 12 for s in samples)
    assert not adds_bos(tiny_tokenizer())


def test_corpus_shorter_than_a_window_is_a_clear_error(tmp_path, tok):
    path = tmp_path / "short.txt"
    path.write_text("only a few words")
    with pytest.raises(SvdadaptError, match="fewer than --seq-len"):
        make_samples(resolve(str(path)), tok, 2, 100)


@pytest.mark.parametrize("template", ["chat", "llama2", "plain"])
def test_templates_separate_prompt_and_response(template, tok):
    corpus = resolve("polarity")
    sample = make_samples(corpus, tok, 1, 512, seed=0, template=template)[0]
    prompt = tok.decode(sample.input_ids[: sample.prompt_len])
    response = tok.decode(sample.input_ids[sample.prompt_len :])
    assert "Review:" in prompt
    assert response.strip().split()[0].replace("</s>", "") in ("positive", "negative")


def test_llama2_template_is_the_papers_format(tok):
    sample = make_samples(resolve("polarity"), tok, 1, 512, template="llama2")[0]
    text = tok.decode(sample.input_ids)
    assert text.startswith("<s>[INST] <<SYS>>\n") and "<</SYS>>" in text and "[/INST]" in text


def test_polarity_splits_160_and_40_and_caps_samples(tok):
    corpus, heldout = resolve("polarity"), resolve("polarity-heldout")
    assert (len(corpus), len(heldout)) == (160, 40)
    assert not {r["instruction"] for r in corpus.rows} & {r["instruction"] for r in heldout.rows}
    assert sum(r["output"] == "positive" for r in heldout.rows) == 20
    assert len(make_samples(corpus, tok, 256, 64)) == 160


def test_named_fields_override_detection(tmp_path, tok):
    rows = [{"body": f"note {i} " * 20, "q": f"question {i}", "a": f"answer {i}"} for i in range(10)]
    path = write_rows(tmp_path / "custom.jsonl", rows)
    with pytest.raises(SvdadaptError, match="cannot tell what the records"):
        resolve(str(path))
    assert resolve(str(path), FieldOptions(text_field="body")).kind == "text"
    corpus = resolve(str(path), FieldOptions(instruction_field="q", output_field="a"))
    assert corpus.kind == "examples"
    with pytest.raises(SvdadaptError, match="no field 'missing'"):
        resolve(str(path), FieldOptions(text_field="missing"))
    with pytest.raises(SvdadaptError, match="go together"):
        resolve(str(path), FieldOptions(instruction_field="q"))


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SvdadaptError, match="not valid JSON"):
        resolve(str(bad))
    scalars = write_rows(tmp_path / "scalars.json", [1, 2, 3], jsonl=False)
    with pytest.raises(SvdadaptError, match="list of objects"):
        resolve(str(scalars))
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(SvdadaptError, match="use a .txt, .json or .jsonl"):
        resolve(str(other))


def test_batches_pad_right_with_a_mask(tok):
    samples = make_samples(resolve("polarity"), tok, 5, 64)
    batches = make_batches(samples, 2, tok.pad_token_id)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    for batch in batches:
        lengths = batch["attention_mask"].sum(1)
        for row, n in enumerate(lengths):
            assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
            assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
