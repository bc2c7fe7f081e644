"""Host inference time of float models, batch 1: what the paper's speed ratios compare.

Measured so that it repeats. In a child process, with TensorFlow on one intra-op and one inter-op
thread, set before TensorFlow starts: a thread pool sized by the machine, shared with whatever else
runs, is what made the ratios jump from run to run. Each model is warmed up, then timed in rounds
that visit every model in turn. A slow spell of the machine then slows every model of that round
alike, so a speed ratio is taken round by round and reported as its median and p10-p90 over rounds.

    python -m train.latency audio_resnet resnet18_1d     # by hand: a line per model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import TextIO

import numpy as np

ROUNDS = 10
ROUND_SECONDS = 1.0  # each model's share of a round (at least one call)
WARMUP_SECONDS = 1.0  # after tracing; at least WARMUP_CALLS calls
WARMUP_CALLS = 3
THREADS = 1


def spread(values: list[float] | np.ndarray) -> dict[str, float]:
    """Median and the 10th/90th percentiles."""
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90)}


def ratio(slow: dict, fast: dict) -> dict[str, float]:
    """How many times faster ``fast`` runs than ``slow``, round by round (both from one ``host_latency``)."""
    return spread(np.array(slow["round_ms"]) / np.array(fast["round_ms"]))


def _measure(names: list[str], rounds: int, round_seconds: float) -> dict[str, dict]:
    """In this process, which must not have started TensorFlow yet."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    import keras

    from train.frontend import default_frontend
    from train.models import BUILDERS

    keras.utils.set_random_seed(0)
    calls = {}
    for name in names:
        model = BUILDERS[name](default_frontend(name).input_shape)
        x = tf.constant(np.random.default_rng(0).standard_normal((1, *model.input_shape[1:])).astype(np.float32))
        forward = tf.function(lambda v, m=model: m(v, training=False))
        forward(x).numpy()  # traces
        started, n = time.perf_counter(), 0
        while n < WARMUP_CALLS or time.perf_counter() - started < WARMUP_SECONDS:
            forward(x).numpy()
            n += 1
        calls[name] = (model.count_params(), lambda f=forward, v=x: f(v).numpy())
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            call, this_round, started = calls[name][1], [], time.perf_counter()
            while not this_round or time.perf_counter() - started < round_seconds:
                c0, t0 = time.process_time(), time.perf_counter()
                call()
                this_round.append(1000 * (time.process_time() - c0))
                walls[name].append(1000 * (time.perf_counter() - t0))
            times[name].append(this_round)
    return {
        name: {
            "params": calls[name][0],
            **{f"{k}_ms": v for k, v in spread([t for r in times[name] for t in r]).items()},
            "calls": sum(len(r) for r in times[name]),
            "round_ms": [float(np.median(r)) for r in times[name]],
            "threads": THREADS,
            "wall": spread(walls[name]),
        }
        for name in names
    }


def host_latency(
    names: list[str], log: TextIO | None = None, rounds: int = ROUNDS, round_seconds: float = ROUND_SECONDS
) -> dict[str, dict]:
    """Per model: parameters, median/p10/p90 of one call in ms, the calls timed and each round's median.

    Measured in a child process so that the thread settings hold whatever this process has started;
    the child's own output (TensorFlow's) goes to ``log`` (default: this process's stderr).
    """
    threads = str(THREADS)
    env = os.environ | {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads, "OMP_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "train.latency", "--json", "--rounds", str(rounds), "--round-seconds", str(round_seconds)]
    result = subprocess.run([*cmd, *names], env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    from train.frontend import FRONT_END_KIND
    from train.tf_env import quiet_tensorflow

    quiet_tensorflow()
    p = argparse.ArgumentParser(prog="python -m train.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", choices=sorted(FRONT_END_KIND))
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--round-seconds", type=float, default=ROUND_SECONDS, help="each model's share of a round")
    p.add_argument("--json", action="store_true", help="measure here (a fresh process) and print JSON")
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(_measure(args.models, args.rounds, args.round_seconds)))
        return 0
    for name, r in host_latency(args.models, rounds=args.rounds, round_seconds=args.round_seconds).items():
        print(
            f"{name}: {r['median_ms']:.2f} ms (p10-p90 {r['p10_ms']:.2f}-{r['p90_ms']:.2f}; {r['calls']} calls in "
            f"{len(r['round_ms'])} rounds, {r['threads']} thread)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
