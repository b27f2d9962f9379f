"""The demo's lesson says what its runs show, from their numbers, whichever way they point."""

from rbwa.demo import TWIN, lesson


def rows(*ends: tuple[float, float]) -> list[dict]:
    return [{"epoch": e, "test_loss": test, "train_loss": train} for e, (test, train) in enumerate(ends)]


def test_the_lesson_reads_the_twin_gap_the_stall_and_the_side_average():
    metrics = {"sgd": rows((0.9, 0.5), (0.021, 0.0011)), "rbwa": rows((0.9, 0.5), (0.028, 0.0059)),
               TWIN: rows((0.9, 0.5), (0.028, 0.0059)), "rbwa-e": rows((0.9, 0.5), (0.023, 0.0034)),
               "swa": rows((0.9, 0.5), (0.017, 0.0011))}
    text = lesson(metrics)
    assert text.startswith("Lesson: RBWA is SGD on a harmonic learning-rate decay") and text.count("\n") == 0
    assert "the same losses at every epoch" in text
    assert "that decay stalls it (final training loss 0.0059 against SGD's 0.0011)" in text
    assert "a side average of SGD's own weights (SWA) lowers its test loss from 0.0210 to 0.0170 without" in text


def test_the_lesson_says_so_when_the_numbers_point_the_other_way():
    metrics = {"sgd": rows((0.03, 0.004)), "rbwa": rows((0.02, 0.002)), TWIN: rows((0.02, 0.002 + 3e-8)),
               "rbwa-e": rows((0.025, 0.003)), "swa": rows((0.031, 0.004))}
    text = lesson(metrics)
    assert "losses within 3e-08 of RBWA's" in text and "that decay does not stall it here" in text
    assert "a side average of SGD's own weights (SWA) does not lower its test loss here (0.0310 against 0.0300)" in text


def test_the_lesson_neither_crashes_nor_claims_a_match_it_cannot_see():
    metrics = {"sgd": rows((0.03, 0.004)), "rbwa": rows((0.9, 0.5), (0.02, 0.002)), TWIN: rows((0.02, 0.002)),
               "rbwa-e": rows((float("nan"), 0.003)), "swa": rows((0.031, 0.004))}
    text = lesson(metrics)  # the twin is shorter than rbwa; rbwa-e's test loss is NaN
    assert "losses that cannot be set beside RBWA's" in text and "(SWA) does not lower its test loss here" in text
