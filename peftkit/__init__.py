"""peftkit: parameter-efficient fine-tuning of pretrained language models from YAML recipes."""

__version__ = "0.1.0"
