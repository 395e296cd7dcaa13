"""`svdadapt generate`: built, trained, merged and exported outputs of the tiny Llama generate, greedy
output is deterministic and the same for a trained run, its merged model and its exported adapter
on the original; prompts from flags, files and stdin; bad input is one line."""

import io
import json

import pytest

from svdadapt.cli import main
from svdadapt.commands import COMMANDS, GenerateOptions, generate

GREEDY = ["--max-new-tokens", "12", "--device", "cpu"]


def ok(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def one_line(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("svdadapt: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def outputs(tiny_dirs, tmp_path_factory):
    """The tiny Llama, a PiSSA run of it as built and as trained, its merged model and its exported
    adapter for the untouched original."""
    root = tmp_path_factory.mktemp("generate")
    model = tiny_dirs["llama"]
    paths = {"model": model, "built": root / "built", "trained": root / "trained", "merged": root / "merged",
             "exported": root / "exported"}  # fmt: skip
    steps = [
        ["build", "--model", model, "--method", "pissa", "--rank", "4", "--device", "cpu", "--out", paths["built"]],
        ["train", paths["built"], "--out", paths["trained"], "--task", "sft", "--data", "polarity", "--max-steps", "4",
         "--train-samples", "16", "--eval-samples", "4", "--max-length", "160", "--module-lr", "5e-2",
         "--device", "cpu"],
        ["merge", paths["trained"], "--out", paths["merged"]],
        ["export", paths["trained"], "--against-original", model, "--out", paths["exported"]],
    ]  # fmt: skip
    for args in steps:
        assert main([str(a) for a in args]) == 0
    return paths


def responses(path):
    return [json.loads(line)["response"] for line in path.read_text().splitlines()]


def test_trained_merged_and_exported_give_the_same_greedy_text(capsys, outputs, tmp_path):
    prompts = ["--prompt", "Is this review positive?", "--prompt", "The film was"]
    for mode in ([], ["--no-chat-template"]):  # the trained model answers the template briefly; raw text runs on
        got = {}
        for name in ("trained", "merged", "exported"):
            base = ["--base", outputs["model"]] if name == "exported" else []
            file = tmp_path / f"{name}{len(mode)}.jsonl"
            out = ok(capsys, "generate", outputs[name], *base, *prompts, *mode, *GREEDY, "--out", file)
            got[name] = responses(file)
            assert all(text in out for text in got[name])  # streamed to stdout as they came
            assert out.splitlines()[-1].startswith("2 response(s), ") and "written to" in out.splitlines()[-1]
        assert got["trained"] == got["merged"] == got["exported"], mode
        ok(capsys, "generate", outputs["trained"], *prompts, *mode, *GREEDY, "--out", tmp_path / "again.jsonl")
        assert responses(tmp_path / "again.jsonl") == got["trained"]  # greedy: deterministic
        ok(capsys, "generate", outputs["model"], *prompts, *mode, *GREEDY, "--out", tmp_path / "original.jsonl")
        assert responses(tmp_path / "original.jsonl") != got["trained"]  # training changed what it says
    assert len(got["trained"][1]) > 6  # raw text runs on: the comparison is of real text


def test_a_built_run_generates_as_its_original(capsys, outputs, tmp_path):
    for name in ("built", "model"):
        ok(capsys, "generate", outputs[name], "--prompt", "Hello there", *GREEDY, "--out", tmp_path / f"{name}.jsonl")
    assert responses(tmp_path / "built.jsonl") == responses(tmp_path / "model.jsonl")  # PiSSA at init is the original


def test_prompts_from_files_stdin_and_messages(capsys, outputs, tmp_path, monkeypatch):
    lines = tmp_path / "prompts.txt"
    lines.write_text("First prompt\n\nSecond prompt\n")
    records = tmp_path / "prompts.jsonl"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]  # fmt: skip
    records.write_text(json.dumps({"prompt": "First prompt"}) + "\n" + json.dumps({"messages": conversation}) + "\n")
    ok(capsys, "generate", outputs["trained"], "--prompts-file", lines, *GREEDY, "--out", tmp_path / "a.jsonl")
    ok(capsys, "generate", outputs["trained"], "--prompts-file", records, *GREEDY, "--out", tmp_path / "b.jsonl")
    a = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in a] == ["First prompt", "Second prompt"] and b[1]["messages"] == conversation
    assert a[0]["response"] == b[0]["response"]
    monkeypatch.setattr("sys.stdin", io.StringIO("First prompt\nSecond prompt\n"))
    ok(capsys, "generate", outputs["trained"], "--prompts-file", "-", *GREEDY, "--out", tmp_path / "c.jsonl")
    assert (tmp_path / "c.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("First prompt"))
    ok(capsys, "generate", outputs["trained"], "--prompt", "-", *GREEDY, "--out", tmp_path / "d.jsonl")
    assert responses(tmp_path / "d.jsonl") == [a[0]["response"]]


def test_system_message_and_raw_text_change_the_prompt(outputs):
    from svdadapt.generation.prompts import Prompt
    from svdadapt.generation.stream import prompt_ids
    from svdadapt.models import load_tokenizer

    tok = load_tokenizer(str(outputs["model"]))
    prompt = Prompt.of_text("Hello")
    assert tok.decode(prompt_ids(prompt, tok, True, None)) == "<s>user\nHello</s>\n<s>assistant\n"
    assert tok.decode(prompt_ids(prompt, tok, True, "Be kind.")).startswith("<s>system\nBe kind.</s>\n<s>user\n")
    assert tok.decode(prompt_ids(prompt, tok, False, None)) == "Hello"


def test_sampling_is_seeded(outputs):
    def sample(seed):
        opts = GenerateOptions.of(target=str(outputs["trained"]), prompt=["The film"], do_sample=True,
                                  temperature=1.5, top_k=100, seed=seed, max_new_tokens=12, device="cpu")  # fmt: skip
        result = generate(opts, progress=False)
        assert len(result.summary().splitlines()) == 1
        return result.generations[0].response

    assert sample(1) == sample(1) and sample(1) != sample(2)


def test_generate_runs_in_one_process():
    assert not COMMANDS["generate"].launchable(None)


def test_bad_input_is_one_line(capsys, outputs, tiny_dirs, tmp_path):
    run, exported, model = outputs["trained"], outputs["exported"], outputs["model"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    ending = tmp_path / "ending.jsonl"
    ending.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    )
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no model here")
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "mine"}\n')
    cases = {
        "give a prompt": [run],
        "holds no prompt": [run, "--prompts-file", empty],
        "ends with an assistant turn": [run, "--prompts-file", ending],
        "does not exist": [run, "--prompts-file", tmp_path / "missing.txt"],
        "is neither an svdadapt run": [tmp_path / "nothing", "--prompt", "a"],
        "is a PEFT adapter; name the model it applies to with --base": [exported, "--prompt", "a"],
        "--base is for a PEFT adapter folder": [run, "--base", model, "--prompt", "a"],
        "not a causal language model": [tiny_dirs["bert"], "--prompt", "a"],
        "--max-new-tokens must be positive": [run, "--prompt", "a", "--max-new-tokens", "-3"],
        "--max-new-tokens must be at most": [run, "--prompt", "a", "--max-new-tokens", str(10**12)],
        "--top-p must be in (0, 1]": [run, "--prompt", "a", "--do-sample", "--top-p", "1.5"],
        "--temperature must be positive": [run, "--prompt", "a", "--do-sample", "--temperature", "0"],
        "add --do-sample": [run, "--prompt", "a", "--top-k", "5"],
        "--seed must be a non-negative": [run, "--prompt", "a", "--seed", "-1"],
        "the model takes 256 positions": [run, "--prompt", "word " * 400],
        "is not an earlier generation's records": [run, "--prompt", "a", "--out", other],
        "--prompt is empty": [run, "--prompt", " "],
    }
    for message, args in cases.items():
        assert message in one_line(capsys, "generate", *args, "--device", "cpu"), message
    assert other.read_text() == '{"text": "mine"}\n'
