"""Model architectures as torch modules, checked against HF transformers."""
