"""Potassium as its demos use it: the pipeline loaded inside @app.init, then app.serve(). Only for the cold-start
comparison in bench/cpu.py (its main thread busy-waits while init() runs)."""

import os

from diffusers import AutoPipelineForText2Image
from potassium import Potassium, Request, Response

app = Potassium("as-is")


@app.init
def init() -> dict:
    return {"pipe": AutoPipelineForText2Image.from_pretrained(os.environ["MODEL_ID"])}


@app.handler("/")
def handler(context: dict, request: Request) -> Response:
    return Response(json={}, status=200)


if __name__ == "__main__":
    app.serve(host=os.environ["HOST"], port=int(os.environ["PORT"]))
