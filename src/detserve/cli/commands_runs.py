"""Run commands: sample, eval-determinism, replay."""
