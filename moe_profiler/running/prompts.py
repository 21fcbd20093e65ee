"""GSM8K test questions -> prompts.txt (one prompt per line) and back."""

from __future__ import annotations

import json
import re
from pathlib import Path

HUB_DATASET = ("openai/gsm8k", "main", "test")


class PromptsError(RuntimeError):
    """The questions could not be loaded; the message says what to do."""


def load_questions(n: int, from_file: Path | None = None) -> list[str]:
    """The first ``n`` GSM8K test questions, from the hub or a local JSONL file."""
    if n < 1:
        raise PromptsError(f"--n must be at least 1, not {n}")
    questions = _from_jsonl(from_file, n) if from_file else _from_hub(n)
    if len(questions) < n:
        source = from_file or "/".join(HUB_DATASET)
        raise PromptsError(f"{source} has only {len(questions)} questions, {n} asked for")
    return questions


def _from_hub(n: int) -> list[str]:
    name, config, split = HUB_DATASET
    try:
        from datasets import load_dataset

        data = load_dataset(name, config, split=split)
    except Exception as e:  # no network, no datasets package, hub errors: all the same to the user
        raise PromptsError(
            f"could not load {name} ({config}, {split}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}\nGive a local copy instead: --from-file PATH "
            '(GSM8K JSONL, one {"question": ...} per line)'
        ) from None
    return [row["question"] for row in data.select(range(min(n, len(data))))]


def _from_jsonl(path: Path, n: int) -> list[str]:
    questions = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    question = row["question"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PromptsError(
                        f'{path}:{line_no}: not a GSM8K line (JSON with a "question")'
                    ) from None
                if not isinstance(question, str) or not question.strip():
                    raise PromptsError(f"{path}:{line_no}: the question is empty")
                questions.append(question)
                if len(questions) == n:
                    break
    except OSError as e:
        raise PromptsError(f"cannot read {path}: {e.strerror}") from None
    return questions


def escape(prompt: str) -> str:
    """One line per prompt: backslash and newlines become \\\\, \\n and \\r."""
    return prompt.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def unescape(line: str) -> str:
    """The inverse of ``escape``."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), line)


def write_prompts(questions: list[str], out: Path) -> Path:
    """Write one escaped question per line."""
    Path(out).write_text("".join(escape(q) + "\n" for q in questions), encoding="utf-8")
    return Path(out)


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompts.txt file (blank lines are an error)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PromptsError(
            f"cannot read {path}: {e.strerror} (run make_prompts.py first)"
        ) from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            raise PromptsError(f"{path}:{line_no}: empty prompt line")
    if not lines:
        raise PromptsError(f"{path} holds no prompts")
    return [unescape(line) for line in lines]
