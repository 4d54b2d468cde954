"""Models: the registry (registry.py), the load decision (loading.py), what a model is for cache
keys (content.py), the toy zoo (zoo.py, zoo_train.py, `yard zoo`: zoo_cli.py, its corpus in
zoo_corpus/) and random-weight models of real shapes (shapes.py).

May import cluster's top-level modules (config, console, node) and cluster.store."""
