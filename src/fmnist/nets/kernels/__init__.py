"""The fused CPU kernels (numba): the report's network's blocks, an epoch's shuffle and augmentation in one
pass, and the bf16 BatchNorm blocks; each beside the plain form it must equal."""
