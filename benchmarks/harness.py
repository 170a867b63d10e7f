"""Timing, memory and FLOP-counting helpers shared by the benchmark modules."""
import dataclasses
import platform
import resource
import statistics
import time


@dataclasses.dataclass
class Result:
    """One row of the table."""

    name: str
    size: str
    seconds: float  # median time of one call
    throughput: str = ""  # e.g. "12.3 img/s"
    ratio: float = None  # the figure the target is about
    target: str = ""  # e.g. "<= 1.05"
    note: str = ""

    def met(self):
        if self.ratio is None or not self.target:
            return None
        op, value = self.target.split()
        return self.ratio <= float(value) if op == "<=" else self.ratio >= float(value)


# Fast calls are repeated until this many seconds have passed (0 in --quick mode: a smoke check).
MIN_SECONDS = 1.0


def median_time(fn, *, warmup=1, repeats=3, min_seconds=None, max_repeats=200):
    """Median wall time of fn() after `warmup` calls; fn must block until done.

    Runs at least `repeats` times and, for fast calls, keeps going until
    `min_seconds` have passed (at most `max_repeats` runs): millisecond timings
    need many samples for a stable median.
    """
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    for _ in range(warmup):
        fn()
    times = []
    started = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - started < min_seconds and len(times) < max_repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_median_times(fns, *, warmup=1, repeats=3):
    """Median wall time of each of fns, called in turn (fn0, fn1, ..., fn0, fn1, ...) after `warmup` rounds.

    For ratios of slow calls on a shared machine: a burst of other load
    slows every side alike instead of whichever happened to run during it.
    """
    times = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, own in zip(fns, times):
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                own.append(time.perf_counter() - start)
    return [statistics.median(own) for own in times]


def pass_seconds(dataset):
    """(wall, CPU) seconds of one pass over an iterable (a tf.data pipeline).

    CPU time (all threads of this process) is the steadier figure on a shared
    machine, where other processes take cores away.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in dataset:
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def median_pass_seconds(datasets, *, repeats=3):
    """[len(datasets), 2]: median (wall, CPU) seconds of one pass over each, after one warm-up pass each;
    the passes alternate between the datasets so that load on the machine falls on all alike."""
    import numpy as np

    for dataset in datasets:
        pass_seconds(dataset)
    return np.median([[pass_seconds(d) for d in datasets] for _ in range(repeats)], axis=0)


def peak_rss_mib():
    """Peak resident set size of this process's own memory so far (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that over from the parent across
    fork and exec, so a subprocess of a big process reports the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(size=4096, repeats=3):
    """GFLOP/s of a warmed-up float32 [size x size] @ [size x size] matmul (2 * size^3 FLOPs)."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    seconds = median_time(lambda: tf.matmul(a, b).numpy(), warmup=2, repeats=repeats)
    return 2.0 * size ** 3 / seconds / 1e9


def conv_flops(model, executed=False):
    """Forward FLOPs (2 x multiply-adds) of the Conv2D, Conv2DTranspose, PyramidConv2D and Dense layers of a model.

    The model must have a static input shape so every layer's output shape is
    known; nested models are walked. Element-wise ops, pooling, BatchNorm and
    resizes are left out (a few percent of a ResNet's work).
    executed=False counts a PyramidConv2D as the convolution it is equivalent to
    (the nominal count, as the issue's 323 / 728 GFLOP figures); executed=True
    counts what it runs (the convolution over its first input plus the
    factorised branch einsums).
    """
    import keras

    from models.layers import PyramidConv2D

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_flops(layer, executed)
            continue
        if isinstance(layer, PyramidConv2D):
            k, f = layer.kernel_size, layer.filters
            _, h, w, _ = layer.output.shape
            if not executed:
                total += 2 * h * w * k * k * sum(layer.split_sizes) * f
                continue
            total += 2 * h * w * k * k * layer.split_sizes[0] * f
            for branch in layer.input[1:]:
                _, bh, bw, c = branch.shape
                # taps, then along rows, then along columns (PyramidConv2D.call)
                total += 2 * (k * k * bh * bw * c * f + k * k * h * bh * bw * f + k * h * w * bw * f)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kh, kw, cin, cout = layer.kernel.shape
            if isinstance(layer, keras.layers.Conv2DTranspose):
                # every input pixel scatters a kh x kw x cout patch
                _, h, w, _ = layer.input.shape
                total += 2 * h * w * kh * kw * cin * cout
            else:
                _, h, w, _ = layer.output.shape
                total += 2 * h * w * kh * kw * cin * cout // getattr(layer, "groups", 1)
        elif isinstance(layer, keras.layers.Dense):
            din, dout = layer.kernel.shape
            outputs = 1
            for d in layer.output.shape[1:-1]:
                outputs *= d
            total += 2 * outputs * din * dout
    return total


def machine_description():
    """CPU model, core count and whether it has AVX-512 (which decides the CLIs' oneDNN default)."""
    import os

    from data.cli import cpu_feature_flags, cpuinfo_field

    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    flags = cpu_feature_flags()
    vector = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else None
    return f"{cpu}, {os.cpu_count()} cores" + (f", {vector}" if vector else "")
