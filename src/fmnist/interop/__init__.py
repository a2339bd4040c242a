"""Interoperability: ONNX out (checked with onnxruntime), Keras out, and Keras in (checked, nothing run)."""
