"""Explanations: input attributions of the class or of an uncertainty score, transformer maps, map checks."""
