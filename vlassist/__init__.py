"""vlassist: an offline visual-analysis assistant on local Qwen-VL checkpoints."""

__version__ = "0.1.0"
