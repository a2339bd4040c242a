"""Training: the settings (a recipe, a runtime), the model registry, a recipe's pieces, the loop, a run's
checkpointed state, and a run watched (progress and Ctrl-C)."""
