"""Property-based fuzzing of modelInputs against a real app.py over HTTP: whatever a caller sends, a 200 with
images or a 4xx JSON error naming the fields at fault; never a 5xx or a traceback; the app keeps serving."""

import json
from collections import Counter

import httpx
import pytest
from hypothesis import given, settings

from serverless_sd.schema import GenerateInputs, LoraChoice
from testkit.fuzzing import EXAMPLES, MODEL_INPUTS, assert_clean, bodies

FIELDS = {*GenerateInputs.model_fields, "negative", "num_images_per_prompt"}
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def client(limited_app):
    with httpx.Client(base_url=limited_app.url, timeout=120) as http:
        yield http


@settings(max_examples=EXAMPLES)
@given(body=bodies(MODEL_INPUTS))
def test_any_body_gets_images_or_a_4xx_naming_its_fields(client, body):
    response = client.post("/", content=body, headers={"Content-Type": "application/json"})
    answer = assert_clean(response)
    STATUSES[response.status_code] += 1
    if response.status_code == 200:
        assert answer["images"] and all(image.startswith("data:image/") for image in answer["images"])
    else:
        assert response.status_code in (413, 422) and answer["error"]
        sent = json.loads(body) if answer.get("errors") else {}
        named = FIELDS | {"modelInputs", "width, height"} | (set(sent) if isinstance(sent, dict) else set())
        for error in answer.get("errors", []):  # each names a field of the schema, or the unknown one sent
            if error["field"] not in named:  # loras.1.name: the LoRA sent second, its name
                field, index, *key = error["field"].split(".", 2)
                assert field == "loras" and int(index) < len(sent["loras"]), (error, sent)
                assert not key or key[0] in LoraChoice.model_fields or key[0] in sent["loras"][int(index)], error
            assert error["message"]


def test_the_app_still_serves_after_the_fuzzing(limited_app, client):
    # The cases reached generation as well as each kind of refusal.
    assert sum(STATUSES.values()) >= EXAMPLES and STATUSES[200] >= 10 and STATUSES[422] and STATUSES[413], STATUSES
    assert limited_app.proc.poll() is None
    answer = client.post("/", json={"prompt": "still here", "num_inference_steps": 1, "seed": 5}).json()
    assert answer["seeds"] == [5]
