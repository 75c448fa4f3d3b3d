"""Anthropic <-> OpenAI translation of requests, responses and streams (pure functions)."""
