"""medcore: 4-bit quantized LoRA fine-tuning of Gemma on MedMCQA, measured honestly."""
import logging

__version__ = "0.1.0"

# bitsandbytes, on a CPU with AVX512-BF16, tries at import to fetch a fused 4-bit kernel from the Hub
# (kernels-community) and logs a warning when it cannot. medcore switches that CPU path off on every Linear4bit
# (quantize.disable_cpu_repack: it breaks training gradients), so the kernel would never run: drop that one line.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward"))
