"""The networks: the report's CNN, fast-cnn (and its whitened variant), res95, their fused CPU kernels
(kernels/), the table of architectures by tag, and inference (evaluation forms, loading from a run)."""

INFERENCE_PRECISIONS = ("fp32", "bf16")  # evaluation, prediction and serving: fp32 unless bf16 is asked for
