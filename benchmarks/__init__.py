"""Speed, efficiency and memory benchmarks: `python -m benchmarks [--quick] [--only NAME] [--json OUT]`.

Every timing is the median of several runs after warm-up; every comparison is
a ratio of two timings measured side by side in the same process. Results go
to BENCHMARKS.md by hand, with the command and the machine.
"""
