"""data.progress: the line format, the throttling of log lines, unknown and zero totals, --quiet, terminals.

Every expected line is written out by hand; a fake clock makes the times exact.
"""
import io

import pytest

from data.progress import LOG_INTERVAL, Progress, ProgressBar, format_duration, format_line


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _bar(total, clock, stream, **kw):
    return ProgressBar(total, "evaluating", stream=stream, clock=clock, terminal=False, **kw)


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.4, "0:59"), (61, "1:01"), (3599.6, "1:00:00"),
                                           (3 * 3600 + 5 * 60 + 7, "3:05:07"), (-2, "0:00")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_line_format():
    # 120 of 500 images in 60 s: 2 images/s, 380 left -> 190 s.
    assert format_line("evaluating", 120, 500, 60.0) == \
        "evaluating [####----------------] 120/500 images, 2.00 images/s, 3:10 left"
    # Slower than one a second: seconds per unit.
    assert format_line("evaluating", 3, 500, 37.5) == \
        "evaluating [--------------------] 3/500 images, 12.5 s/image, 1:43:32 left"  # 497 x 12.5 s
    assert format_line("converting", 500, 500, 240.0, unit="tensor", final=True) == \
        "converting [####################] 500/500 tensors, 2.08 tensors/s, 4:00 in all"
    # A resumed run: the rate counts the 100 done in this run only.
    assert format_line("converting", 300, 500, 100.0, initial=200) == \
        "converting [############--------] 300/500 images, 1.00 images/s, 3:20 left"


def test_unknown_and_zero_totals():
    assert format_line("evaluating", 7, None, 2.0) == "evaluating 7 images, 3.50 images/s"
    assert format_line("evaluating", 7, None, 2.0, final=True) == "evaluating 7 images, 3.50 images/s, 0:02 in all"
    assert format_line("evaluating", 0, 0, 0.0, final=True) == \
        "evaluating [####################] 0/0 images, 0:00 in all"
    # Nothing done yet: no rate, so no time left.
    assert format_line("evaluating", 0, 10, 5.0) == "evaluating [--------------------] 0/10 images"


def test_a_log_gets_the_first_line_then_one_per_interval_and_the_last():
    clock, stream = Clock(), io.StringIO()
    bar = _bar(100, clock, stream)
    shown_at = []
    for i in range(1, 101):
        clock.now += 1.0  # one image a second
        before = stream.getvalue().count("\n")
        bar.update()
        if stream.getvalue().count("\n") > before:
            shown_at.append(i)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert LOG_INTERVAL == 10.0
    assert shown_at == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91]  # the 100th is close()'s line
    assert lines[0] == "evaluating [--------------------] 1/100 images, 1.00 images/s, 1:39 left"
    assert lines[-1] == "evaluating [####################] 100/100 images, 1.00 images/s, 1:40 in all"
    assert len(lines) == 11 and "\r" not in stream.getvalue()
    bar.close()
    assert len(stream.getvalue().splitlines()) == 11  # a second close adds nothing


def test_unknown_total_and_empty_loops_through_track():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(stream=stream, clock=clock)

    def items():  # no len(): unknown total
        for i in range(3):
            clock.now += 2.0
            yield i

    assert list(progress.track(items(), "predicting")) == [0, 1, 2]
    assert list(progress.track([], "predicting")) == []
    assert stream.getvalue().splitlines() == [
        "predicting 1 images, 2.0 s/image",
        "predicting 3 images, 2.0 s/image, 0:06 in all",
        "predicting [####################] 0/0 images, 0:00 in all",
    ]


def test_quiet_shows_nothing():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(quiet=True, stream=stream, clock=clock)
    with progress.bar(5, "converting") as bar:
        for _ in range(5):
            clock.now += 20.0
            bar.update()
    assert list(progress.track(range(4), "predicting")) == [0, 1, 2, 3]
    assert stream.getvalue() == ""


def test_a_failed_loop_leaves_no_final_line():
    clock, stream = Clock(), io.StringIO()
    with pytest.raises(RuntimeError):
        with _bar(4, clock, stream) as bar:
            clock.now += 1.0
            bar.update()
            raise RuntimeError("a bug")
    assert stream.getvalue().splitlines() == ["evaluating [#####---------------] 1/4 images, 1.00 images/s, 0:03 left"]


def test_a_terminal_redraws_one_line_in_place():
    clock, stream = Clock(), io.StringIO()
    bar = ProgressBar(2, "predicting", stream=stream, clock=clock, terminal=True)
    clock.now += 0.05
    bar.update()
    clock.now += 0.05
    bar.update()
    bar.close()
    assert stream.getvalue() == (
        "\rpredicting [##########----------] 1/2 images, 20.00 images/s, 0:00 left\x1b[K"
        "\rpredicting [####################] 2/2 images, 20.00 images/s, 0:00 in all\x1b[K\n")


def test_lines_printed_above_a_terminal_bar_clear_it_and_draw_it_again():
    clock, stream = Clock(), io.StringIO()
    bar = ProgressBar(4, "predicting", stream=stream, clock=clock, terminal=True)
    with bar.above():  # nothing drawn yet: nothing to clear
        stream.write("first\n")
    clock.now += 1.0
    bar.update()
    with bar.above():
        stream.write("warning: skipped: a.png: empty file (0 bytes)\n")
    line = "predicting [#####---------------] 1/4 images, 1.00 images/s, 0:03 left"
    assert stream.getvalue() == (f"first\n\r{line}\x1b[K"
                                 "\r\x1b[Kwarning: skipped: a.png: empty file (0 bytes)\n"
                                 f"\r{line}\x1b[K")
    log = io.StringIO()
    bar = _bar(4, clock, log)
    bar.update()
    with bar.above():
        log.write("a note\n")
    assert log.getvalue().splitlines()[1:] == ["a note"]  # a log needs no clearing
