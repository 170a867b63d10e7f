"""python -m benchmarks [--quick] [--only NAME ...] [--threads N] [--json OUT.json]"""
import datetime
import json
import os
import sys

from data import cli  # imports no TensorFlow
from data.cli import set_tensorflow_environment

# Before TensorFlow is imported (it reads these once): quiet C++ logging, oneDNN CPU kernels where they help.
set_tensorflow_environment()

AREAS = ("losses", "pipeline", "coco_input", "coco_pipeline", "pspnet", "protocols", "mask_rcnn", "detector", "memory",
         "deploy", "deploy_accuracy")


def _format(results, judge=True):
    header = f"{'name':<44} {'size':<22} {'median s':>10} {'throughput':>14} {'ratio':>8} {'target':>8}  note"
    lines = [header, "-" * len(header)]
    for r in results:
        ratio = "" if r.ratio is None else f"{r.ratio:.3f}"
        met = r.met() if judge else None
        mark = "" if met is None else (" ok" if met else " MISSED")
        lines.append(f"{r.name:<44} {r.size:<22} {r.seconds:>10.4f} {r.throughput:>14} {ratio:>8} "
                     f"{r.target:>8}{mark}  {r.note}")
    return "\n".join(lines)


def build_parser():
    parser = cli.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check that the harness works")
    parser.add_argument("--only", nargs="+", choices=AREAS, default=list(AREAS), metavar="AREA",
                        help=f"run these areas only (default: all of {', '.join(AREAS)})")
    parser.add_argument("--json", help="write the results here (a .json file)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads of TensorFlow (intra- and inter-op) and torch alike (default: all cores)")
    cli.add_debug_flag(parser)
    return parser


def main(argv=None):
    """Runs the benchmarks of argv (default sys.argv[1:]), prints the table; returns 0. User errors: one line."""
    args = build_parser().parse_args(argv)
    with cli.user_errors(args.debug):
        cli.check_positive("--threads", args.threads)
        if args.json:
            cli.check_output_file("--json", args.json)  # before minutes of measuring
        return _run(args, argv)


def _run(args, argv):
    import importlib

    try:  # the detector's reference; torchvision must be imported before TensorFlow (it loads triton)
        import torch
        import torchvision  # noqa: F401

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    except ImportError:
        pass
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    os.environ["BENCHMARK_THREADS"] = str(args.threads)  # for benchmarks.memory's subprocesses

    from benchmarks import harness
    from benchmarks.harness import machine_description

    if args.quick:
        harness.MIN_SECONDS = 0.0

    results = []
    for area in args.only:
        module = importlib.import_module(f"benchmarks.{area}")
        print(f"[{area}] ...", flush=True)
        results += module.run(quick=args.quick)
    print()
    # Quick sizes are far too small for the targets to mean anything: show them, judge nothing.
    print(_format(results, judge=not args.quick))
    if args.quick:
        print("\n(--quick: tiny sizes, a smoke check of the harness; targets are judged on full runs only)")
    load = os.getloadavg()
    print(f"\n{args.threads} threads; load average at the end (1 / 5 / 15 min): {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} on {os.cpu_count()} cores")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "versions": {"tensorflow": tf.__version__, "keras": __import__("keras").__version__},
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "threads": args.threads, "load_average": os.getloadavg(),
        "results": [r.__dict__ for r in results],
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
