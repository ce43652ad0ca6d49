"""Images out to an S3-compatible bucket, over HTTP: a real app storing into moto's S3 server through boto3."""

import base64
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from test_app import generate

FAST = {"prompt": "a lighthouse", "num_inference_steps": 2, "seed": 11, "num_images": 2}


@pytest.fixture(scope="module")
def bucket_app(start_app, models, s3):
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env(s3.bucket("images"), S3_PREFIX="site/",
                                                                   S3_URL_EXPIRES_S="900")})
    yield app
    app.stop()  # this module's alone: not held to the end of the session


def test_with_a_bucket_images_are_answered_as_presigned_urls_to_the_same_bytes(bucket_app):
    before = time.time()
    answer = generate(bucket_app, **FAST)
    assert "images" not in answer and "image_base64" not in answer
    assert len(answer["image_urls"]) == 2 and len(set(answer["image_urls"])) == 2
    assert before + 900 - 5 <= answer["urls_expire_at"] <= time.time() + 900 + 5
    inline = generate(bucket_app, **FAST, output="base64")  # the same images, as data URIs
    for url, uri in zip(answer["image_urls"], inline["images"], strict=True):
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in query
        assert urlsplit(url).path.startswith("/images/site/") and url.split("?")[0].endswith(".png")
        fetched = httpx.get(url)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert fetched.content == base64.b64decode(uri.partition(",")[2])
    assert answer["timings"]["store_ms"] >= 0 and answer["seeds"] == inline["seeds"]


def test_the_apps_document_offers_urls_only_where_a_bucket_is(bucket_app, sd_app):
    def document(app) -> tuple[dict, dict]:
        post = httpx.get(app.url + "/openapi.json").json()["paths"]["/"]["post"]
        return post["requestBody"]["content"]["application/json"]["schema"]["properties"]["output"], post["responses"]

    (output, responses), (plain, plain_responses) = document(bucket_app), document(sd_app)
    assert output["anyOf"][0]["enum"] == ["base64", "url"] and output["default"] == "url" and "502" in responses
    assert plain["anyOf"][0]["enum"] == ["base64"] and plain["default"] == "base64" and "502" not in plain_responses


def test_each_request_gets_its_own_unguessable_folder(bucket_app, s3):
    first, second = (generate(bucket_app, **FAST, output_format="webp")["image_urls"] for _ in range(2))
    folders = {urlsplit(url).path.split("/")[3] for url in first + second}
    assert len(folders) == 2 and all(len(folder) == 32 for folder in folders)
    assert all(url.split("?")[0].endswith(".webp") for url in first)
    assert httpx.get(first[0]).headers["content-type"] == "image/webp"


def test_public_urls_are_the_base_url_and_the_key(start_app, models, s3):
    bucket = s3.bucket("public-images", public=True)
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env(bucket, S3_PUBLIC_URL=f"{s3.url}/{bucket}/")})
    answer = generate(app, **FAST)
    assert "urls_expire_at" not in answer
    for url in answer["image_urls"]:
        assert url.startswith(f"{s3.url}/{bucket}/") and "?" not in url and "//" not in url.split("://")[1]
        assert httpx.get(url).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_url_output_without_a_bucket_is_a_422_naming_output(sd_app):
    response = sd_app.post({**FAST, "output": "url"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "output" and "S3_BUCKET" in response.json()["error"]
    assert sd_app.post({**FAST, "output": "pdf"}).json()["errors"][0]["field"] == "output"
    assert "image_urls" not in generate(sd_app, **FAST, output="base64")


@pytest.mark.parametrize("refused", ["*", "*/1.png"])
def test_a_bucket_that_refuses_writes_fails_the_request_and_keeps_nothing(start_app, models, s3_enforcing, refused):
    """Refused from the first image, or only the second: either way a clear 502, and no image left behind."""
    bucket = s3_enforcing.bucket("refusing" if refused == "*" else "half-refusing", refused_keys=refused)
    app = start_app({"MODEL_ID": str(models["sd"]), **s3_enforcing.env(bucket)})
    response = app.post(FAST)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error.startswith(f"output: the images could not be stored in bucket '{bucket}': 403")
    assert "Traceback" not in response.text and s3_enforcing.credentials["aws_secret_access_key"] not in app.logs()
    assert s3_enforcing.keys(bucket) == []
    assert "images" in generate(app, **FAST, output="base64")  # the replica serves on


def test_an_unreachable_bucket_is_a_clear_error_too(start_app, models, s3):
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env("images", S3_ENDPOINT_URL="http://127.0.0.1:9")})
    response = app.post({**FAST, "num_images": 1})
    assert response.status_code == 502 and "could not be stored in bucket 'images'" in response.json()["error"]
