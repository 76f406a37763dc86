"""Container commands: start, wait, smoke, stop, run, status, logs."""
