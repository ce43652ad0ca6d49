"""The Potassium app: init() loads the model once; the handler turns modelInputs into images.

Run it with `python3 app.py`; POST modelInputs JSON to / (docs/api.md lists every field).
"""

from serverless_sd import cold_start  # noqa: F401 - first: it reads the weights while the rest imports

# isort: split
from potassium import Request

from serverless_sd import openapi, schema, serving
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.serving import Potassium  # Potassium 0.5.0, its known defects mended
from serverless_sd.settings import Settings

settings = Settings.from_env()
app = Potassium("sd-serverless-template", settings,
                documents={"/openapi.json": lambda context: openapi.app_document(context["model"].limits),
                           "/loras": lambda context: context["model"].loras.listing(),
                           "/progress": lambda context: context["model"].progress.snapshot()},
                warm_up=lambda context: context["model"].warm_up())


@app.init
def init() -> dict:
    return {"model": StableDiffusion.load(settings)}


@app.handler("/")
@serving.endpoint(settings)
def handler(context: dict, request: Request) -> dict:
    model: StableDiffusion = context["model"]
    inputs = schema.parse(request.json, model.limits)
    return model.generate(inputs, request_id=request.id).answer(model.bucket)


if __name__ == "__main__":
    app.serve()
