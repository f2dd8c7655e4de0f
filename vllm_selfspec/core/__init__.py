"""The vLLM-free core of vllm-selfspec: skip sets, profiles and their resolution.

Nothing under this package imports vLLM or torch, so unit tests cover it in seconds.
"""
