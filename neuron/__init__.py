"""neuron: the per-host daemon of helexa (model loading and inference on this host's devices)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("helexa")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
