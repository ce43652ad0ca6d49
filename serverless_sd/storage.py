"""Images out to an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, ...), answered as URLs instead of base64.

Each request's images go under a new random folder, S3_PREFIX/<32 hex>/<i>.<format>, so that a URL cannot be
guessed from another. The answer's URLs are presigned GETs valid for S3_URL_EXPIRES_S, or, with S3_PUBLIC_URL (a
public bucket, a CDN in front of it), that base URL and the key. A request's images are all stored or none is: if
one fails, those already written are deleted and the request fails with StorageError.
"""

import time
import uuid
from dataclasses import dataclass

from . import images
from .settings import Settings


class StorageError(RuntimeError):
    """The bucket refused or could not be reached: the message says which and why, without credentials."""


@dataclass
class Stored:
    urls: list[str]
    expires_at: int | None  # unix seconds when presigned URLs stop working; None: public URLs


class Bucket:
    def __init__(self, settings: Settings):
        import boto3  # only where a bucket is configured: it adds half a second to a start without one
        from botocore.config import Config

        self.name = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.expires_s = settings.s3_url_expires_s
        self.public_url = settings.s3_public_url.rstrip("/")
        self._client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region or None,
            # SigV4: what R2 and every current S3 region take; bounded waits, a few retries for a passing fault.
            config=Config(signature_version="s3v4", connect_timeout=5, read_timeout=30,
                          retries={"max_attempts": 3, "mode": "standard"}))

    @classmethod
    def configured(cls, settings: Settings) -> "Bucket | None":
        return cls(settings) if settings.s3_bucket else None

    def store(self, encoded: list[bytes], output_format: str) -> Stored:
        from botocore.exceptions import BotoCoreError, ClientError

        folder = f"{self.prefix}{uuid.uuid4().hex}/"
        written: list[str] = []
        try:
            for index, data in enumerate(encoded):
                key = f"{folder}{index}.{output_format}"
                self._client.put_object(Bucket=self.name, Key=key, Body=data,
                                        ContentType=images.MIME_TYPES[output_format])
                written.append(key)
        except (BotoCoreError, ClientError) as error:
            self._delete(written)
            raise StorageError(f"output: the images could not be stored in bucket {self.name!r}: "
                               f"{_reason(error)}") from None
        if self.public_url:
            return Stored([f"{self.public_url}/{key}" for key in written], None)
        expires_at = int(time.time()) + self.expires_s
        return Stored([self._client.generate_presigned_url("get_object", Params={"Bucket": self.name, "Key": key},
                                                           ExpiresIn=self.expires_s) for key in written], expires_at)

    def _delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for key in keys:
            try:
                self._client.delete_object(Bucket=self.name, Key=key)
            except (BotoCoreError, ClientError):
                pass  # the bucket that refused one write may refuse deletes too: the answer names none of these


def _reason(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        details = response.get("Error", {})
        code = details.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{code} ({details.get('Message') or 'no message'})"
    return type(error).__name__
