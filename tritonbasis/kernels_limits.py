"""Limits of the Triton kernels that must be known without importing triton."""

# The fused kernels hold the whole (padded) basis block in one tile: BLOCK_M x BLOCK_CB fp32
# accumulators per program. 256 keeps that at <= 128 registers/thread with 4 warps and
# BLOCK_M = 64. Must equal tritonbasis.kernels.configs.MAX_BLOCK_CB (a test checks).
MAX_BASIS_CHANNELS = 256
