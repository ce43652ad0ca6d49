# syntax=docker/dockerfile:1
# The app image: one Stable Diffusion model baked in, served by Potassium on port 8000.
#   docker build --build-arg MODEL_ID=stabilityai/stable-diffusion-xl-base-1.0 -t sd-app .
#   (optional: --build-arg CONTROLNET_ID=lllyasviel/sd-controlnet-canny, --build-arg SAFETY_CHECKER=off)
#   docker run --gpus all -p 8000:8000 sd-app
# CUDA 12.8 (PyTorch's cu128 build): NVIDIA GPUs of compute capability 7.5 to 12.0, Turing (T4, RTX 20xx) to Blackwell
# (B200, RTX 50xx), A100, L4, L40S, H100 and H200 between; a host driver of 570 or newer.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /app
# The server runs as this unprivileged user; the weights and code stay root's, read-only to it.
RUN useradd --create-home --uid 10001 app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELS_DIR=/models HF_HUB_DISABLE_TELEMETRY=1

# Dependencies first: they change least often. PyTorch first, requirements.txt's version in its CUDA 12.8 build (a
# grep that finds no pin fails the build: pipefail).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY requirements.txt ./
# hadolint ignore=DL3013
RUN pip install "$(grep -E '^torch==' requirements.txt | cut -d' ' -f1)" --index-url https://download.pytorch.org/whl/cu128
RUN pip install -r requirements.txt

# Weights next, so that a change to the app's code does not download them again.
ARG MODEL_ID=prompthero/openjourney-v4
ARG CONTROLNET_ID=
ARG SAFETY_CHECKER=on
# DROP_T5=1: an SD 3 model without its T5 encoder (docs/operations.md), neither downloaded nor loaded.
ARG DROP_T5=0
# LoRAs served by name (docs/api.md, "LoRAs"): comma-separated [name=]owner/repo[/file.safetensors].
ARG LORA_IDS=
# Previews while a job runs (docs/api.md, "Progress"): every PREVIEW_EVERY steps, decoded by the family's TAESD (or
# PREVIEW_DECODER), baked here; 0: progress without previews.
ARG PREVIEW_EVERY=0
ARG PREVIEW_DECODER=
ENV MODEL_ID=${MODEL_ID} CONTROLNET_ID=${CONTROLNET_ID} SAFETY_CHECKER=${SAFETY_CHECKER} DROP_T5=${DROP_T5} \
    LORA_IDS=${LORA_IDS} PREVIEW_EVERY=${PREVIEW_EVERY} PREVIEW_DECODER=${PREVIEW_DECODER}
COPY download.py ./
COPY serverless_sd/__init__.py serverless_sd/settings.py serverless_sd/fetching.py serverless_sd/weights.py \
     serverless_sd/families.py serverless_sd/
# A gated or private model: docker build --secret id=HF_TOKEN,env=HF_TOKEN ...  (a secret, not a build arg:
# build args stay readable in the image's history). BAKE_WEIGHTS=0: an image without weights (a few GB, built in
# minutes), which serves MODEL_ID from the host's cached models (CACHED_MODELS_DIR: RunPod's, docs/deployment.md).
ARG BAKE_WEIGHTS=1
RUN --mount=type=secret,id=HF_TOKEN,env=HF_TOKEN \
    if [ "$BAKE_WEIGHTS" = 1 ]; then python3 download.py; else echo "BAKE_WEIGHTS=$BAKE_WEIGHTS: no weights baked"; fi

# At run time nothing is downloaded.
ENV HF_HUB_OFFLINE=1
COPY . .

USER 10001
EXPOSE 8000
# Fails once the replica cannot answer or is stuck (GET /healthz: a request past STUCK_AFTER_S, files near the limit).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 CMD ["python3", "-m", "serverless_sd.health"]
CMD ["python3", "-u", "app.py"]
