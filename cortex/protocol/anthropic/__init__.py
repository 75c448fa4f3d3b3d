"""The Anthropic Messages dialect: request types and the error envelope."""
