"""Training: one fit loop (loop.py) for pretraining and every fine-tuning method (recipes.py, lora.py)."""
