"""Contracts both programs speak: OpenAI and Anthropic envelopes, error envelopes, the fleet contract."""
