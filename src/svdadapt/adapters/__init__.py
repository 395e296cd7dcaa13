"""Adapter tensors, their initialisation per method, PEFT checkpoints and the trainable module."""

from .peft_format import LoraFactors, read_peft_lora, write_peft_lora
from .state import AdapterSet, LayerAdapter

__all__ = ["AdapterSet", "LayerAdapter", "LoraFactors", "read_peft_lora", "write_peft_lora"]
