"""Chat data: `messages` (TRL/OpenAI) and ShareGPT `conversations` records kept whole, every assistant
turn labelled and nothing else, truncation by whole turns, and one line for what is not understood."""

import json

import pytest

from svdadapt import SvdadaptError
from svdadapt.assets import tiny_tokenizer
from svdadapt.cli import main
from svdadapt.data import make_samples, resolve
from svdadapt.runs import Run
from svdadapt.train.datasets import IGNORE, CausalCollator
from svdadapt.train.options import TaskOptions
from svdadapt.train.session import prepare_data


def conversation(i: int, system: bool = True) -> list[dict]:
    turns = [
        {"role": "user", "content": f"What is {i} plus one?"},
        {"role": "assistant", "content": f"It is {i + 1}."},
        {"role": "user", "content": "And twice that?"},
        {"role": "assistant", "content": f"That makes {2 * (i + 1)}."},
    ]
    return ([{"role": "system", "content": "Answer briefly."}] if system else []) + turns


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def messages_file(tmp_path_factory):
    return write_jsonl(
        tmp_path_factory.mktemp("chat") / "chat.jsonl", [{"messages": conversation(i)} for i in range(24)]
    )


def labelled_runs(feature: dict) -> list[list[int]]:
    """The labelled tokens of one feature, as runs of consecutive positions."""
    runs, previous = [], None
    for position, label in enumerate(feature["labels"]):
        if label == IGNORE:
            continue
        assert label == feature["input_ids"][position]  # a label is the token itself (the model shifts)
        if previous != position - 1:
            runs.append([])
        runs[-1].append(label)
        previous = position
    return runs


def test_exactly_the_assistant_turns_are_labelled(messages_file, tok):
    data = prepare_data(TaskOptions.of(task="sft", data=str(messages_file), max_length=256), None, tok, seed=0)
    assert len(data.train) + len(data.eval) == 24
    for feature in data.train + data.eval:
        text = tok.decode(feature["input_ids"])
        i = int(text.split("What is ")[1].split(" ")[0])
        expected = [f"It is {i + 1}.</s>\n", f"That makes {2 * (i + 1)}.</s>\n"]  # the template's assistant turns
        assert [tok.decode(run) for run in labelled_runs(feature)] == expected
        masked = tok.decode([t for t, label in zip(feature["input_ids"], feature["labels"]) if label == IGNORE])
        assert "Answer briefly." in masked and "And twice that?" in masked and "That makes" not in masked
    batch = CausalCollator(tok.pad_token_id)(data.train[:4])
    assert (batch["labels"] != IGNORE).sum() == sum(sum(map(len, labelled_runs(f))) for f in data.train[:4])


def test_a_messages_file_trains_with_loss_on_assistant_turns(capsys, tiny_dirs, messages_file, tmp_path):
    args = ["train", "--model", str(tiny_dirs["llama"]), "--method", "lora", "--rank", "4", "--task", "sft",
            "--data", str(messages_file), "--max-steps", "3", "--batch-size", "4", "--device", "cpu",
            "--max-length", "128", "--out", str(tmp_path / "run"), "--logging-steps", "1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["steps"] == 3 and results["train_examples"] == 22 and results["train_loss"] > 0
    assert Run.open(tmp_path / "run").meta["stage"] == "trained"


def test_one_exchange_renders_as_the_single_turn_example_does(tmp_path, tok):
    pair = {"instruction": "Name a colour.", "output": "Blue."}
    chat = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}
    for template in ("chat", "llama2", "plain"):
        single = make_samples(resolve(str(write_jsonl(tmp_path / "a.jsonl", [pair]))), tok, 1, 64, template=template)
        whole = make_samples(resolve(str(write_jsonl(tmp_path / "m.jsonl", [chat]))), tok, 1, 64, template=template)
        assert single[0].input_ids == whole[0].input_ids and single[0].responses() == whole[0].responses(), template


@pytest.mark.parametrize("template", ["chat", "llama2", "plain"])
def test_sharegpt_conversations_are_kept_whole(template, tmp_path, tok):
    turns = [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hello there"},
             {"from": "gpt", "value": "Hi, friend"}, {"from": "human", "value": "Bye now"},
             {"from": "gpt", "value": "Goodbye, friend"}]  # fmt: skip
    corpus = resolve(f"wizardlm:{write_jsonl(tmp_path / 'w.jsonl', [{'conversations': turns}] * 3)}")
    sample = make_samples(corpus, tok, 1, 256, template=template)[0]
    text = tok.decode(sample.input_ids)
    assert all(t["value"] in text for t in turns)
    answers = [tok.decode(sample.input_ids[a:b]) for a, b in sample.responses()]
    assert len(answers) == 2 and answers[0].startswith("Hi, friend") and answers[1].startswith("Goodbye, friend")
    assert "Be kind." not in "".join(answers) and "Bye now" not in "".join(answers)


def test_truncation_keeps_whole_leading_turns_and_says_so(capsys, messages_file, tok):
    rendered = make_samples(resolve(str(messages_file)), tok, 1, 256)[0]
    first_end = rendered.responses()[0][1]
    cut = make_samples(resolve(str(messages_file)), tok, 1, first_end + 3)[0]
    assert cut.input_ids == rendered.input_ids[:first_end] and cut.responses() == rendered.responses()[:1]
    assert cut.lost == rendered.responses()[1][1] - rendered.responses()[1][0]
    prepare_data(TaskOptions.of(task="sft", data=str(messages_file), max_length=first_end + 3), None, tok, seed=0)
    note = f"svdadapt: note: 24 of 24 examples of {messages_file} lost response tokens to --max-length {first_end + 3}"
    assert note in capsys.readouterr().out


BAD = {
    "unknown role": ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}, "role 'bot'"),
    "empty content": ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}, "empty"),
    "no assistant": ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    "late system": ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "s"},
                                  {"role": "assistant", "content": "x"}]}, "system message after"),  # fmt: skip
    "mixed": ({"messages": conversation(0), "instruction": "a", "output": "b"}, "mixes schemas"),
    "not text": ({"messages": [{"role": "user", "content": [{"type": "image"}]},
                               {"role": "assistant", "content": "x"}]}, "not text"),  # fmt: skip
    "sharegpt from": ({"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}, "'robot'"),
    "other schema": ({"instruction": "a", "output": "b"}, "has no messages field"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_what_is_not_understood_is_refused_in_one_line_naming_the_record(case, capsys, tiny_dirs, tmp_path):
    record, message = BAD[case]
    first = {"messages": conversation(0)}
    if case == "sharegpt from":
        first = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", [first, first, record, first])
    args = ["train", "--model", str(tiny_dirs["llama"]), "--method", "lora", "--task", "sft", "--data", str(path),
            "--out", str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svdadapt: error: record 3 of ") and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = (  # drops every assistant turn but the last, as reasoning-stripping templates do
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}<s>{{ m['role'] }}\n"
        "{{ m['content'] }}</s>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    corpus = resolve(str(write_jsonl(tmp_path / "m.jsonl", [{"messages": conversation(1)}])))
    with pytest.raises(SvdadaptError, match="turn by turn"):
        make_samples(corpus, tok, 1, 256)
    assert make_samples(corpus, tok, 1, 256, template="plain")[0].responses()


def test_calibration_renders_the_whole_conversation(capsys, tiny_dirs, messages_file, tmp_path, tok):
    sample = make_samples(resolve(str(messages_file)), tok, 1, 256)[0]
    assert "Answer briefly." in tok.decode(sample.input_ids) and "That makes" in tok.decode(sample.input_ids)
    args = ["calibrate", "--model", str(tiny_dirs["llama"]), "--data", str(messages_file), "--samples", "6",
            "--seq-len", "96", "--device", "cpu", "--out", str(tmp_path / "covs")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "covs" / "store.json").is_file()
