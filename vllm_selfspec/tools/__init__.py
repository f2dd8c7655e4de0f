"""The offline tools behind the ``vllm-selfspec`` command: tune, evaluate, bench, demo.

They drive vLLM engines from outside; no vLLM process loads them as part of the plugin.
"""
