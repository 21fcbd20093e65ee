"""make_prompts.py and prompts.txt (moe_profiler/running/prompts.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_profiler.running import prompts

REPO = Path(__file__).resolve().parent.parent


def test_committed_prompts_are_the_first_25_test_questions(questions):
    assert prompts.read_prompts(REPO / "prompts.txt") == questions[:25]
    assert len((REPO / "prompts.txt").read_text().splitlines()) == 25


def test_make_prompts_from_file(tmp_path, gsm8k_path, questions):
    out = subprocess.run(
        [
            sys.executable,
            "make_prompts.py",
            "--from-file",
            str(gsm8k_path),
            "--n",
            "40",
            "--out",
            str(tmp_path / "p.txt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wrote 40 prompts to {tmp_path / 'p.txt'}"
    assert prompts.read_prompts(tmp_path / "p.txt") == questions[:40]


@pytest.mark.parametrize("text", ["a\nb", "back\\slash\\n literal", "cr\r\nlf", "\\", "plain"])
def test_escape_round_trip_keeps_one_prompt_per_line(text):
    line = prompts.escape(text)
    assert "\n" not in line and "\r" not in line
    assert prompts.unescape(line) == text


def test_multiline_questions_survive_the_file(tmp_path):
    qs = ["first\nsecond line", "x\\ny"]
    prompts.write_prompts(qs, tmp_path / "p.txt")
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 2
    assert prompts.read_prompts(tmp_path / "p.txt") == qs


def test_bad_inputs_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "ok"}) + "\n" + '{"answer": 1}\n')
    with pytest.raises(
        prompts.PromptsError, match=r'bad.jsonl:2: not a GSM8K line \(JSON with a "question"\)'
    ):
        prompts.load_questions(5, bad)
    one = tmp_path / "one.jsonl"
    one.write_text('{"question": "q"}\n')
    with pytest.raises(prompts.PromptsError, match="has only 1 questions, 5 asked for"):
        prompts.load_questions(5, one)
    with pytest.raises(prompts.PromptsError, match=r"cannot read .*missing\.jsonl: No such file"):
        prompts.load_questions(1, tmp_path / "missing.jsonl")
    with pytest.raises(prompts.PromptsError, match="--n must be at least 1"):
        prompts.load_questions(0, bad)
    (tmp_path / "p.txt").write_text("one\n\nthree\n")
    with pytest.raises(prompts.PromptsError, match=r"p\.txt:2: empty prompt line"):
        prompts.read_prompts(tmp_path / "p.txt")
    with pytest.raises(prompts.PromptsError, match=r"run make_prompts\.py first"):
        prompts.read_prompts(tmp_path / "none.txt")


def test_hub_failure_says_what_to_do(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(prompts.PromptsError) as e:
        prompts.load_questions(25)
    assert "could not load openai/gsm8k (main, test) from the Hugging Face hub" in str(e.value)
    assert "--from-file PATH" in str(e.value)
