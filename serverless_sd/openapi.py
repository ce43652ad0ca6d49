"""The app's OpenAPI 3.1 document, served at GET /openapi.json: POST /, its modelInputs, answer and error body taken
from the models in schema.py, with this deployment's limits filled in. (The gateway's own document is FastAPI's.)

What JSON Schema cannot say (the pixel budget, which fields go together) is checked by the schema and answered 422.
"""

from pydantic import BaseModel

from .schema import DEFAULT_STEPS, Answer, ErrorBody, FieldError, GenerateInputs, Limits


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
    fields["num_inference_steps"].update(maximum=limits.max_steps, default=min(DEFAULT_STEPS, limits.max_steps))
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


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
