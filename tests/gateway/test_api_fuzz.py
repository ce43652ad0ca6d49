"""Property-based fuzzing of the gateway's start, check and cancel bodies over HTTP: every answer is Banana's
HTTP 200 JSON envelope, a failure's message says "error", nothing leaks a traceback, the gateway keeps serving."""

from collections import Counter

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.fuzzing import EXAMPLES, MODEL_INPUTS, assert_clean, bodies, inputs_for, numbers, texts

MESSAGES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def gateway(start_gateway, limited_app):
    return start_gateway([limited_app.url])


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def known_call(gateway):
    return gateway.start_job({"prompt": "known", "num_inference_steps": 1}, start_only=False)["callID"]


def requests(known_call: str) -> st.SearchStrategy[tuple[str, bytes]]:
    call_ids = st.just(known_call) | texts
    start_fields = {"apiKey": texts, "modelKey": texts, "modelInputs": MODEL_INPUTS}
    start_options = {"startOnly": st.booleans(), "id": texts, "created": numbers,
                     "webhook": st.sampled_from(["https://example.com/hook", "http://169.254.169.254/latest",
                                                 "file:///etc/passwd", "http://127.0.0.1:1/"])}
    check_fields = {"apiKey": texts, "callID": call_ids}
    check_options = {"longPoll": st.booleans(), "id": texts}
    # Well-formed bodies (their modelInputs anything), or any subset of the fields, each plausible or arbitrary.
    start = (st.fixed_dictionaries(start_fields, optional=start_options) | inputs_for(start_fields | start_options)
             # and, every draw, well-formed startOnly starts: the queue path must be reached, not left to chance
             | st.fixed_dictionaries({**start_fields, "startOnly": st.just(True)}))
    check = st.fixed_dictionaries(check_fields, optional=check_options) | inputs_for(check_fields | check_options)
    return st.one_of(
        st.tuples(st.sampled_from(["/start/v4", "/start/v4/"]), bodies(start)),
        st.tuples(st.sampled_from(["/check/v4", "/check/v4/", "/cancel/v4/"]), bodies(check)),
    )


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_any_body_gets_bananas_envelope(client, known_call, data):
    route, body = data.draw(requests(known_call))
    response = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:500]
    answer = assert_clean(response)
    assert set(answer) >= {"id", "message", "created", "apiVersion", "modelOutputs"}
    MESSAGES[answer["message"] if "error" not in answer["message"] else "error"] += 1
    if "error" in answer["message"].lower():
        assert answer["finished"] is True and answer["modelOutputs"] is None


def test_the_gateway_still_serves_after_the_fuzzing(gateway, client):
    # The cases got past validation into the queue (startOnly "", a sync start's result), not only refusals.
    assert sum(MESSAGES.values()) >= EXAMPLES and MESSAGES[""] and MESSAGES["error"], MESSAGES
    assert gateway.proc.poll() is None
    assert client.get("/healthz").json()["ok"]
    answer = gateway.start_job({"prompt": "still here", "num_inference_steps": 1, "seed": 9}, start_only=False)
    assert answer["message"] == "success" and answer["modelOutputs"][0]["seeds"] == [9]
