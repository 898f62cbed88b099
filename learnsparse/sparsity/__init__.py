"""Sparsity plugins: trainer hooks that learn structure (regularizers, schedules)."""
