"""train.py in child processes: start, watch a run folder's saved steps, kill, and two-worker clusters on 127.0.0.1."""
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_train(args, env=None):
    """`python train.py ARGS` started in the repo root; stdout and stderr together, as text."""
    return subprocess.Popen([sys.executable, "train.py"] + args, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steps_done(out):
    """The steps the run folder's committed state holds (0 before its first save)."""
    try:
        with open(os.path.join(out, "state.json")) as f:
            return json.load(f)["steps_done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def kill_when(processes, out, at_least_steps, delay):
    """SIGKILL every process `delay` seconds after the run in `out` has saved `at_least_steps` steps."""
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if steps_done(out) >= at_least_steps:
            break
        time.sleep(0.05)
    time.sleep(delay)
    for process in processes:
        process.kill()
        process.wait()


def two_worker_envs():
    """The environments of a two-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1 (TF_CONFIG), task 0 first."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            for index in range(2)]
