"""Task adapters: load records, build prompts, parse answers, reward and grade."""
