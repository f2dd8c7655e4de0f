"""The ``vllm-selfspec`` command: prepare-model, demo."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vllm-selfspec`` console script."""
    parser = argparse.ArgumentParser(prog="vllm-selfspec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare-model", help="convert the embedded SmolLM2-135M-Instruct; print its folder")
    demo = commands.add_parser("demo", help="plain vLLM against self_skip on the same prompts")
    from vllm_selfspec import demo as demo_module

    demo_module.add_arguments(demo)
    args = parser.parse_args(argv)

    if args.command == "prepare-model":
        from vllm_selfspec.model_prep import prepare_default_model

        print(prepare_default_model())
        return 0
    return demo_module.run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
