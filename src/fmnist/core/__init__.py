"""Foundations: typed errors, bounded file reads and atomic writes, the machine (its description and set-up),
CPU threads and OpenMP's waiting, the live progress bars, the version."""
