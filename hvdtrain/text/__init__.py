"""Text for language models: tokenizers and token files."""
