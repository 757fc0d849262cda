"""Analyses of a scores table: detection metrics, layer tables, meta classifiers, samples, sweeps, maps."""
