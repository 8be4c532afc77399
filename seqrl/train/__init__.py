"""Training loops: the shared offline loop, run assembly, logging and plots."""
