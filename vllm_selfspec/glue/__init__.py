"""The thin layer that connects the vLLM-free core to vLLM's engine and proposer machinery."""
