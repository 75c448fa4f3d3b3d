"""The OpenAI dialect: request envelopes and the error envelope."""
