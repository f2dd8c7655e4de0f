"""vllm-selfspec: self-speculative decoding for vLLM by skipping the target's own sublayers.

The ``vllm.general_plugins`` entry point :func:`register` checks the vLLM version and
installs the patches in :mod:`vllm_selfspec.glue.patches`. After that, vLLM accepts
``speculative_config={"method": "self_skip", ...}`` and ``--speculative-model self-skip``.
"""

from vllm_selfspec.compat import PLUGIN_VERSION as __version__  # noqa: F401


def register() -> None:
    """vLLM general-plugin entry point; safe to call more than once per process."""
    from vllm_selfspec.compat import check_vllm_version

    check_vllm_version()
    from vllm_selfspec.glue.patches import apply_all

    apply_all()
