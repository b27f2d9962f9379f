"""rbwa.training.progress: a bar on a terminal, plain periodic lines on a file, nothing when asked."""

import io

from rbwa.training.progress import Progress, duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_file_plain_lines_with_rate_loss_and_time_left_and_no_carriage_return():
    out = io.StringIO()
    shown = Progress(4, "adamw epoch 1/5", every=0.0, stream=out)
    for i in range(4):
        shown.step(lambda i=i: 1.5 + i)
    shown.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()  # none after the last step: the epoch's own line follows
    assert lines[0].startswith("adamw epoch 1/5: 1/4 steps, ") and ", loss 1.5000, " in lines[0]
    assert lines[2].startswith("adamw epoch 1/5: 3/4 steps, ") and lines[2].endswith(" s left")


def test_on_a_terminal_a_bar_and_when_disabled_nothing():
    out = Terminal()
    shown = Progress(3, "posthoc run", stream=out, unit="candidates")
    for _ in range(3):
        shown.step()
    shown.close()
    assert "posthoc run" in out.getvalue() and "\r" in out.getvalue()
    quiet = io.StringIO()
    shown = Progress(3, "x", enabled=False, every=0.0, stream=quiet)
    for _ in range(3):
        shown.step(lambda: 1 / 0)  # never read
    assert quiet.getvalue() == ""


def test_durations_read_at_a_glance():
    assert (duration(42.4), duration(174), duration(7384)) == ("42 s", "2 min 54 s", "2 h 3 min")
