import pytest

from vllm_selfspec.tools.prompts import PromptSetError, load_prompt_set


def test_shipped_and_humaneval_sets():
    assert len(load_prompt_set("chat")) == 32
    assert len(load_prompt_set("summarization")) == 8
    humaneval = load_prompt_set("humaneval")
    assert len(humaneval) == 164 and humaneval[0].startswith("from typing import List")


def test_prompt_files_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert load_prompt_set(str(path)) == ["a", "b"]
    path.write_text("")
    with pytest.raises(PromptSetError, match="holds no prompts"):
        load_prompt_set(str(path))
    path.write_text('{"text": "a"}\n')
    with pytest.raises(PromptSetError, match="line 1"):
        load_prompt_set(str(path))
    with pytest.raises(PromptSetError, match="unknown prompt set 'nope'"):
        load_prompt_set("nope")
