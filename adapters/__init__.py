"""The registry of servable LoRA adapters: manifests, validation, naming."""
