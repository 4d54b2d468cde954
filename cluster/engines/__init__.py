"""Generation engines: `engine: hf | vllm` and the vLLM version table (engine.py), and a model
loaded into vLLM behind the same small interface as HF (engine_vllm.py).

May import cluster's top-level modules and cluster.models."""
