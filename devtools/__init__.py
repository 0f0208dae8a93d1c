"""Developer tools for the pack (test/demo asset generators, host import helpers)."""
