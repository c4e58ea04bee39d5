"""Limits of the Triton kernels that must be known without importing triton."""

# The fused kernels hold the whole (padded) basis block in one tile: BLOCK_M x BLOCK_CB fp32
# accumulators per program. At 256 every forward config spilled registers on sm_90 in the
# compile tier; 128 compiles clean. Must equal tritonbasis.kernels.configs.MAX_BLOCK_CB (a
# test checks).
MAX_BASIS_CHANNELS = 128
