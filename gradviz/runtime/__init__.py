"""How passes run: the memory planner, progress with an ETA, the on-disk cache, multi-process scoring."""
