"""Optional training features: pruning, fine-tuning, user models by import path."""
