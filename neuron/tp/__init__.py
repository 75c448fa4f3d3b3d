"""Tensor parallelism: rank workers, sharding, collectives."""
