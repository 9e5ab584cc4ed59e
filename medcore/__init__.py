"""medcore: 4-bit quantized LoRA fine-tuning of Gemma on MedMCQA, measured honestly."""

__version__ = "0.1.0"
