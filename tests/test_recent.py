"""A replica's last answers, by request id: what a recovering gateway finishes a job with (GET /answers/<id>)."""

import time

from serverless_sd.recent import Recent


def test_an_answer_is_kept_and_its_request_is_running_until_then():
    recent = Recent()
    assert recent.get("call_1") is False
    recent.begin("call_1")
    assert recent.get("call_1") is True and recent.get("call_2") is False
    recent.keep("call_1", 200, b'{"images": []}')
    assert recent.get("call_1") == (200, b'{"images": []}')


def test_kept_answers_are_bounded_in_number_bytes_and_time():
    recent = Recent(max_answers=3, max_bytes=100, keep_s=0.2)
    for i in range(5):
        recent.keep(f"call_{i}", 200, b"x" * 10)
    assert [recent.get(f"call_{i}") is False for i in range(5)] == [True, True, False, False, False]
    recent.keep("big", 422, b"y" * 90)  # over the bytes with the others: the oldest go first
    assert recent.get("big") == (422, b"y" * 90) and recent.get("call_3") is False
    recent.keep("huge", 200, b"z" * 101)  # larger than the bound by itself: not kept at all
    assert recent.get("huge") is False and recent.get("big")
    time.sleep(0.25)
    assert recent.get("big") is False
