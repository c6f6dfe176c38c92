"""The answer cache on plain data: one render per key, and nobody waits on a render when an answer exists."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from driverlog_daemon.expose.web.cache import AnswerCache
from driverlog_daemon.expose.web.responses import Response, text_response


class SlowRender:
    """A render that says when it has started and ends when the test lets it, counting how often it ran."""

    def __init__(self, body: str) -> None:
        self.body, self.renders = body, 0
        self.started, self.finish = threading.Event(), threading.Event()

    def __call__(self) -> Response:
        self.renders += 1
        self.started.set()
        assert self.finish.wait(10)
        return text_response("200 OK", self.body)


def test_while_a_new_state_renders_the_others_get_the_previous_answer() -> None:
    cache = AnswerCache()
    old = cache.answer(("/", (), 1), lambda: text_response("200 OK", "state 1"))
    slow = SlowRender("state 2")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(cache.answer, ("/", (), 2), slow)
        assert slow.started.wait(5)
        others = [pool.submit(cache.answer, ("/", (), 2), slow) for _ in range(3)]
        assert [o.result(timeout=5) for o in others] == [old] * 3  # not waiting for the render
        assert cache.answer(("/", (("q", "x"),), 2), lambda: text_response("200 OK", "other")).body == b"other\n"
        slow.finish.set()
        assert first.result(timeout=5).body == b"state 2\n"
    assert slow.renders == 1  # rendered once
    assert cache.answer(("/", (), 2), slow).body == b"state 2\n"


def test_with_no_previous_answer_the_others_wait_for_the_one_render() -> None:
    cache = AnswerCache()
    slow = SlowRender("first")
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(cache.answer, ("/a", (), 1), slow)
        assert slow.started.wait(5)
        second = pool.submit(cache.answer, ("/a", (), 1), slow)
        slow.finish.set()
        assert first.result(timeout=5).body == second.result(timeout=5).body == b"first\n"
    assert slow.renders == 1
