"""Resolving model ids, safetensors, GGUF and in-situ quantisation."""
