"""python -m benchmarks [--quick] [--only NAME ...] [--json OUT.json]"""
import argparse
import datetime
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels on (TensorFlow enables them only on some CPUs): 1.5x faster PSPNet training
# steps here, see BENCHMARKS.md. TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

AREAS = ("losses", "pipeline", "coco_input", "pspnet", "mask_rcnn", "memory")


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check that the harness works")
    parser.add_argument("--only", nargs="+", choices=AREAS, default=list(AREAS))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import importlib

    import tensorflow as tf

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
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "versions": {"tensorflow": tf.__version__, "keras": __import__("keras").__version__},
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": [r.__dict__ for r in results],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
