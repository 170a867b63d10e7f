"""Progress of long loops on stderr: count, rate and time left; nothing with --quiet.

    progress = Progress(quiet=args.quiet)                       # a command, from its --quiet flag
    for path in progress.track(paths, "predicting"):            # a library loop over a sized iterable
        ...
    with progress.bar(total, "converting", unit="image") as bar:  # a loop that counts its own units
        ...
        bar.update(n)

Library functions take `progress=None` (shown on stderr, as below) or a Progress
(`as_progress` turns the argument into one); Progress(quiet=True) shows nothing.

On a terminal the line is redrawn in place (at most 10 times a second); lines printed
inside `with bar.above():` land above it. Elsewhere (a log
file, a pipe, a batch system) each line shown is its own line, so logs stay readable:
the first update, then at most one line every LOG_INTERVAL seconds, and the last:

    evaluating [#####---------------] 120/500 images, 2.10 images/s, 3:01 left
    evaluating [####################] 500/500 images, 2.08 images/s, 4:00 in all

A rate under one unit a second reads as seconds per unit ("12.3 s/image"); an unknown total
shows the count and rate only ("evaluating 120 images, 2.10 images/s"); the rate counts
only the units done in this run (a resumed conversion starts at `initial`).
"""
import contextlib
import sys
import time

BAR_WIDTH = 20
LOG_INTERVAL = 10.0  # seconds between lines in a log: an hour-long evaluation writes a few hundred
TERMINAL_INTERVAL = 0.1


def format_duration(seconds):
    """Seconds -> "M:SS", or "H:MM:SS" from an hour on."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_line(label, count, total, elapsed, *, unit="image", initial=0, final=False):
    """One progress line (no newline): label, bar and count/total (or the count alone when total is
    None), rate, and time left (or, final, the time in all). elapsed: seconds since the bar started,
    in which count - initial units were done."""
    units = f"{unit}s"
    parts = []
    if total is None:
        head = f"{label} {count} {units}"
    else:
        fraction = min(count / total, 1.0) if total > 0 else 1.0
        filled = int(fraction * BAR_WIDTH)
        head = f"{label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {count}/{total} {units}"
    done = count - initial
    rate = done / elapsed if done > 0 and elapsed > 0 else None
    if rate is not None:
        parts.append(f"{rate:.2f} {units}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}")
    if final:
        parts.append(f"{format_duration(elapsed)} in all")
    elif total is not None and rate is not None:
        parts.append(f"{format_duration(max(total - count, 0) / rate)} left")
    return ", ".join([head] + parts)


class ProgressBar:
    """The progress of one loop; update(n) after each n units done, close() (or a `with` block) at the end.

    stream: default sys.stderr (looked up when the bar is made). terminal: redraw in place
    (default: whether stream is a terminal). interval: the fewest seconds between two lines
    shown (default TERMINAL_INTERVAL or LOG_INTERVAL). enabled=False: shows nothing.
    clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, total, label, *, unit="image", initial=0, stream=None, terminal=None, interval=None,
                 enabled=True, clock=time.monotonic):
        self.total = None if total is None else int(total)
        self.label, self.unit, self.initial, self.count = label, unit, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.interval = interval if interval is not None else (TERMINAL_INTERVAL if self.terminal else LOG_INTERVAL)
        self.enabled, self.clock = enabled, clock
        self.started = clock()
        self.last_shown = None
        self.closed = False

    def update(self, n=1):
        """n more units done; shows a line unless one was shown less than `interval` seconds ago.

        The line of the last unit is left to close(), which says the time in all instead of the time left.
        """
        self.count += n
        if not self.enabled or self.closed or (self.total is not None and self.count >= self.total):
            return
        now = self.clock()
        if self.last_shown is None or now - self.last_shown >= self.interval:
            self._show(now, final=False)

    def close(self):
        """Shows the final line (count, rate, time in all); a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        if self.enabled:
            self._show(self.clock(), final=True)
            if self.terminal:
                self._write("\n")

    @contextlib.contextmanager
    def above(self):
        """Inside, lines printed (a warning, a per-item note, on stdout or stderr) land above a terminal's bar:
        its line is cleared first and drawn again after. In a log nothing needs doing."""
        drawn = self.enabled and self.terminal and not self.closed and self.last_shown is not None
        if drawn:
            self._write("\r\x1b[K")
        try:
            yield
        finally:
            if drawn:
                sys.stdout.flush()  # stdout's lines first, then the bar under them
                self._show(self.clock(), final=False)

    def abandon(self):
        """Ends the bar without a final line (the loop failed): a terminal line is ended so that the
        error starts on its own line."""
        if not self.closed and self.enabled and self.terminal and self.last_shown is not None:
            self._write("\n")
        self.closed = True

    def _show(self, now, final):
        line = format_line(self.label, self.count, self.total, now - self.started, unit=self.unit,
                           initial=self.initial, final=final)
        # On a terminal: back to the line's start, the new text, and the rest of the old one cleared.
        self._write(f"\r{line}\x1b[K" if self.terminal else f"{line}\n")
        self.last_shown = now

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:
            self.abandon()


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """What a command makes from --quiet and hands to library loops: it makes their ProgressBars.

    quiet: every bar shows nothing. stream, interval, clock: as ProgressBar (for tests).
    """

    def __init__(self, quiet=False, *, stream=None, interval=None, clock=time.monotonic):
        self.quiet, self.stream, self.interval, self.clock = quiet, stream, interval, clock

    def bar(self, total, label, *, unit="image", initial=0):
        """A ProgressBar over `total` units (None: unknown), starting at `initial` (units done before)."""
        return ProgressBar(total, label, unit=unit, initial=initial, stream=self.stream, interval=self.interval,
                           enabled=not self.quiet, clock=self.clock)

    def track(self, iterable, label, *, total=None, unit="image"):
        """Yields the items of `iterable`, counting one unit as each is finished with (when the next one is
        asked for). total: default len(iterable) where it has one."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        with self.bar(total, label, unit=unit) as bar:
            for item in iterable:
                yield item
                bar.update()


def as_progress(progress):
    """A library function's `progress` argument -> a Progress: None -> shown on stderr."""
    return Progress() if progress is None else progress


def add_quiet_flag(parser):
    """--quiet: the commands' switch for every progress bar (Progress(quiet=args.quiet))."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar on stderr (results, warnings and errors still print)")


def dataset_length(dataset):
    """The number of elements of a tf.data.Dataset where TensorFlow knows it, else None."""
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality >= 0 else None
