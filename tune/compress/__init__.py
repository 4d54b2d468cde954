"""The compression steps of a sweep trial: depth pruning (prune.py), FFN width pruning (ffn.py),
distillation (distill.py), the LoRA heal (heal.py) and quantization (quantize.py), with their
calibration texts (calibration.py) and causal-LM loss (lm.py).

May import cluster/, actors/ and tune/config.py; nothing of the sweep or its scoring."""
