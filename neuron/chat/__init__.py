"""Chat templates, reasoning split and tool-call parsing."""
