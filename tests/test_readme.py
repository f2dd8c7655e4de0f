"""The README's commands and options are ones this package has: each `vllm-selfspec` command
parses, each `make` target exists, each `python -m` module is there, each JSON config parses,
and the options table lists exactly the options the plugin accepts."""

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

from vllm_selfspec.core.draft_settings import OPTION_NAMES
from vllm_selfspec.tools.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PLACEHOLDERS = {"MODEL": "some/model", "DIR": "some-dir"}


def _commands(program: str) -> list[str]:
    """Every command line starting with ``program`` in the README's code blocks and inline code."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    found = [line for line in lines + inline if line.startswith(program + " ")]
    assert found, f"the README shows no {program!r} command"
    return found


def _argv(command: str) -> list[str]:
    return [PLACEHOLDERS.get(word, word) for word in shlex.split(command)[1:]]


def test_every_vllm_selfspec_command_parses():
    parser = build_parser()
    for command in _commands("vllm-selfspec"):
        argv = _argv(command)
        if argv[0] == "serve":  # handed to vLLM's own `vllm serve` unchanged
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            if exit_.code != 0:  # 0: --help
                pytest.fail(f"README.md: `{command}` does not parse")


def test_every_make_target_and_python_module_exists():
    makefile = (REPO / "Makefile").read_text()
    for command in _commands("make"):
        target = shlex.split(command)[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README.md: no make target {target!r}"
    for command in _commands("python -m"):
        module = shlex.split(command)[2]
        assert importlib.util.find_spec(module) is not None, f"README.md: no module {module!r}"


def test_every_speculative_config_in_the_readme_is_json_for_self_skip():
    configs = re.findall(r"--speculative-config '([^']+)'", README)
    assert configs
    for config in configs:
        given = json.loads(config)
        assert given["method"] == "self_skip", config
        assert set(given) - {"method"} <= set(OPTION_NAMES), config


def test_the_options_table_lists_every_option_and_no_other():
    section = README.split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, flags=re.M):
        documented |= set(re.findall(r"`([a-z_]+)`", row))
    vllm_fields = {"method", "num_speculative_tokens", "num_speculative_tokens_per_batch_size"}
    assert documented == set(OPTION_NAMES) | vllm_fields
