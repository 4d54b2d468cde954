"""Functions and scripts the experiment tests run as conditions (importable by Ray's workers)."""
import json
import os
import time

SCRIPT = r'''
import json, os, signal, sys, time
mode, i = sys.argv[1], int(sys.argv[2])
print("Loading the model", flush=True)
if mode == "tqdm":
    from tqdm import tqdm
    for _ in tqdm(range(30), file=sys.stderr):
        time.sleep(float(os.environ.get("STEP_S", "0.1")))
elif mode == "error":
    raise ValueError(f"bad checkpoint {i}")
elif mode == "stop" and i == 3:
    os.kill(os.getpid(), signal.SIGSTOP)
elif mode == "huge":
    for k in range(200000):
        print(f"noise line {k:06d}")
    open(os.path.join(os.environ["YARD_OUT"], "kept.txt"), "w").write("mine")
    open(os.path.join(os.environ["YARD_OUT"], "..", "outside.txt"), "w").write("not the store's")
elif mode == "sleep":
    time.sleep(float(os.environ.get("STEP_S", "0.2")))
print(json.dumps({"i": i, "mode": mode, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")}))
'''


def trial(condition, ctx):
    """A function condition: reports progress, writes to its folder, returns a result."""
    ctx.phase("loading")
    for k in range(3):
        ctx.progress(k + 1, 3)
    (ctx.out_dir / "note.txt").write_text(f"x={condition['x']}")
    print("a print is output too")
    if condition["x"] == "hang":
        time.sleep(120)  # no heartbeat: the job cancels it
    return {"x2": condition["x"] * 2, "env_out": os.environ["YARD_OUT"] == str(ctx.out_dir), "nested": {"a": 1}}


def write_script(tmp_path) -> str:
    path = tmp_path / "work.py"
    path.write_text(SCRIPT)
    return str(path)


def ran(store, experiment: str) -> dict[str, list[dict]]:
    """condition id -> the markers of all its complete runs, oldest first."""
    out: dict[str, list[dict]] = {}
    for key in sorted(store.list_keys(f"experiments/{experiment}/")):
        parts = key.split("/")
        if len(parts) == 5 and parts[4] == "_COMPLETE.json" and parts[2] != "results":
            out.setdefault(parts[2], []).append(json.loads(store.get_bytes(key)))
    return out
