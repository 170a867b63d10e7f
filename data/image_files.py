"""The one loop over a user's image files that every model family's predict_files runs (predict.py).

    done = predict_over_images(paths, "out/", ("color", "overlay"), work, skip_bad=True)

A family supplies only its per-image work and the kinds of file it writes; the loop does
the rest the same way for every family:
- outputs: image NAME.ext writes OUT/NAME_KIND.png for each KIND, plus `shared` files
  (e.g. detections.json) for all images. Before any image is read, an output that exists
  already is refused unless overwrite, and so are two images that would write the same
  file (photos/a/x.png and photos/b/x.jpg): UsageError, one line naming the file.
- reading: data.images.read_image (uint8 [H, W, 3] RGB, upright). A bad file (damaged,
  truncated, not an image, gone since it was listed) stops the run with
  data.images.BadImageError naming it; with skip_bad it is skipped with a warning
  ("warning: skipped: ...") and the count is given at the end.
- progress: a data.progress bar over the images ("predicting").
"""
import collections
import os

from data import cli, images
from data.errors import UsageError
from data.images import BadImageError
from data.progress import as_progress


def output_paths(paths, out_dir, kinds, *, shared=(), overwrite=False):
    """[{kind: OUT/NAME_KIND.png}] per path, after refusing outputs in the way (module doc); raises UsageError."""
    targets = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        targets.append({kind: os.path.join(out_dir, f"{stem}_{kind}.png") for kind in kinds})
    writers = collections.defaultdict(list)
    for path, files in zip(paths, targets):
        for target in files.values():
            writers[target].append(path)
    for target, sources in writers.items():
        if len(sources) > 1:
            raise UsageError(f"{sources[0]} and {sources[1]}: both would write {target}; "
                             "rename one, or predict them into separate --out folders")
    if not overwrite:
        for target in list(writers) + [os.path.join(out_dir, name) for name in shared]:
            if os.path.exists(target):
                raise UsageError(f"{target}: exists already; pass --overwrite or another --out")
    return targets


def predict_over_images(paths, out_dir, kinds, work, *, shared=(), overwrite=False, skip_bad=False, progress=None):
    """Runs work(number, path, rgb, targets) for each readable image of `paths`; returns [(path, targets)] of those.

    kinds: the KINDs of OUT/NAME_KIND.png each image writes; shared: names of files in
    out_dir written once for all (by the caller, after this returns). work gets the
    image's number (from 1, in `paths` order, skipped images counted), its path, rgb
    uint8 [H, W, 3] and targets {kind: path}, writes the files and may return a
    line to print on stdout (above a terminal's progress bar). progress: a
    data.progress.Progress (None: shown on stderr). Errors: module doc.
    """
    targets = output_paths(paths, out_dir, kinds, shared=shared, overwrite=overwrite)
    os.makedirs(out_dir, exist_ok=True)
    done, skipped = [], 0
    with as_progress(progress).bar(len(paths), "predicting") as bar:
        for number, (path, files) in enumerate(zip(paths, targets), start=1):
            try:
                rgb = images.read_image(path)
            except BadImageError as error:
                if not skip_bad:
                    raise
                with bar.above():
                    cli.warn(f"skipped: {error}")
                skipped += 1
            else:
                note = work(number, path, rgb, files)
                if note:
                    with bar.above():
                        print(note, flush=True)
                done.append((path, files))
            bar.update()
    if skipped:
        cli.warn(f"skipped {skipped} of {len(paths)} images that could not be read (--skip-bad)")
    return done
