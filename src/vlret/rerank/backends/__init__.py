"""Generation and relevance backends: OpenAI-compatible HTTP, local transformers, and offline ones."""
