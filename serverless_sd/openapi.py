"""The OpenAPI 3.1 documents, each served at GET /openapi.json: the app's POST / (its modelInputs taken from the one
pydantic schema, with this deployment's limits filled in) and the gateway's Banana v4 routes.

What JSON Schema cannot say (the pixel budget, which fields go together) is checked by the schema and answered 422.
"""

from pydantic import BaseModel

from .gateway.bodies import CheckBody, StartBody
from .schema import Answer, ErrorBody, FieldError, GenerateInputs, Limits


def _schema(model: type[BaseModel]) -> dict:
    """A model's JSON Schema, its nested models referred to in the document's components (listed there once)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def app_document(limits: Limits) -> dict:
    inputs = _schema(GenerateInputs)
    fields = inputs["properties"]
    for side in ("width", "height"):
        fields[side]["anyOf"][0].update(minimum=64, maximum=limits.max_side, multipleOf=8)
    fields["num_inference_steps"]["maximum"] = limits.max_steps
    fields["num_images"]["maximum"] = limits.max_images
    fields["prompt"]["maxLength"] = limits.max_prompt_chars
    fields["negative_prompt"]["anyOf"][0]["maxLength"] = limits.max_prompt_chars
    fields["negative"] = {**fields["negative_prompt"], "title": "Negative (the same as negative_prompt)"}
    fields["num_images_per_prompt"] = {**fields["num_images"], "title": "The same as num_images"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stable Diffusion app (Potassium)", "version": "1"},
        "paths": {"/": {"post": {
            "summary": "Generate images from modelInputs",
            "requestBody": {"required": True, "content": {"application/json": {"schema": inputs}}},
            "responses": {
                "200": _json("the images, base64 data URIs", _schema(Answer)),
                "413": _json("the body is larger than MAX_BODY_BYTES", _schema(ErrorBody)),
                "422": _json("a field is wrong: `errors` names each one", _schema(ErrorBody)),
                "500": _json("an internal failure (out of GPU memory, a bug); the details are in the app's log",
                             _schema(ErrorBody)),
            },
        }}},
        "components": {"schemas": {"FieldError": _schema(FieldError)}},
    }


ENVELOPE = {"type": "object", "required": ["id", "message", "created", "apiVersion", "modelOutputs"], "properties": {
    "id": {"type": "string"},
    "message": {"type": "string", "description": '"success", "running", "" (a startOnly start), or a failure '
                                                 'containing the word "error"'},
    "created": {"type": "integer"},
    "apiVersion": {"type": "string"},
    "modelOutputs": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"type": "object"}}]},
    "callID": {"type": "string"},
    "finished": {"type": "boolean"},
    "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled", "expired"]},
    "queuePosition": {"type": "integer", "minimum": 0},
    "timings": {"type": "object", "additionalProperties": {"type": "number"}},
}}


def gateway_document() -> dict:
    def route(summary: str, body: type) -> dict:
        return {"post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body.model_json_schema()}}},
            "responses": {"200": _json('Banana\'s envelope; every failure too, its message containing "error"',
                                       ENVELOPE)},
        }}

    paths = {}
    for path, summary, body in (("/start/v4/", "Start a job (and wait for it unless startOnly)", StartBody),
                                ("/check/v4/", "A job's state or result (longPoll waits for the end)", CheckBody),
                                ("/cancel/v4/", "Cancel a queued or running job", CheckBody)):
        paths[path] = paths[path.rstrip("/")] = route(summary, body)
    paths["/healthz"] = {"get": {"summary": "Which replicas are up", "responses": {"200": _json("ok", {
        "type": "object", "required": ["ok", "backends"],
        "properties": {"ok": {"type": "boolean"}, "backends": {"type": "object"}}}),
        "401": _json("API keys are configured and the request did not send one as Authorization: Bearer KEY",
                     _schema(ErrorBody)),
    }}}
    return {"openapi": "3.1.0", "info": {"title": "Banana v4 gateway", "version": "1"}, "paths": paths}


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
