"""What trains: the Trainer class composed in one place (`trainer`: peftkit's layers in one named order, their
state given in a `TrainerSetup`), Trainer arguments and the loop around `trainer.train`, run guards, speed
defaults, attention kernel, LM head on learned positions, packing, imbalance, the validation split and early
stopping, the launch adjustments for DDP/DeepSpeed, and `train_summary.json`.

Imports: `core`, `recipe`, `runs`, `model`, `data`, `evaluation`, `errors`.
"""
