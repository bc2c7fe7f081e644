"""Stage 2: int8 quantization, host verification under the real runtimes, C emission, board budgets."""
