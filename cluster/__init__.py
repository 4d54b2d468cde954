"""modelyard's ground floor: configs, artifact storage, model registry and loading, the toy zoo,
Ray runtime, job entrypoints and progress/status. Imports nothing from actors/, tune/ or serve/."""
