"""Load phases: each counts its own time, nested ones are taken out of the outer one, names add up."""

import threading

from ollama_img.phases import phase, recording, timed


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_nested_phases_count_only_their_own_time():
    clock = Clock()

    @timed("read")
    def read(seconds):
        clock.now += seconds

    with recording(clock) as timer:
        with phase("build"):
            clock.now += 1.0
            read(0.5)
            with phase("eval"):
                clock.now += 2.0
                read(0.25)  # inside eval: counts as read, not eval
            clock.now += 0.125
        read(4.0)
    assert timer.phases == {"read": 4.75, "eval": 2.0, "build": 1.125}
    assert list(timer.phases) == ["read", "eval", "build"]  # the order in which phases ended
    assert timer.summary() == "read 4.75 s, eval 2.00 s, build 1.12 s"


def test_nothing_is_recorded_outside_a_recording_or_on_another_thread():
    clock = Clock()
    with phase("read"):  # no recording: a no-op
        clock.now += 1
    with recording(clock) as timer:
        other = threading.Thread(target=lambda: phase("read").__enter__())
        other.start()
        other.join()
        with phase("resolve"):
            clock.now += 3
    assert timer.phases == {"resolve": 3}
    with phase("read"):
        pass
    assert timer.phases == {"resolve": 3}
