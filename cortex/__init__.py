"""cortex: the helexa gateway (one OpenAI + Anthropic API in front of every neuron).

Pure Python: nothing under cortex/ imports torch, numpy or neuron.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("helexa")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
