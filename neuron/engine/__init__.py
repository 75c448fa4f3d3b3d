"""Device workers, admission, generation loop, sampling, KV and state caches."""
