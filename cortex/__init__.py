"""cortex: the helexa gateway (one OpenAI + Anthropic API in front of every neuron).

Pure Python: nothing under cortex/ imports torch, numpy or neuron.
"""
