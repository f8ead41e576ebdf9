"""tunegate's embedded tuner: dataset checks, LoRA SFT (PEFT + TRL), merge and GGUF export.

Each entry point runs as a subprocess of the gateway, never inside it.
"""
