"""An S3-compatible server for the tests: moto's standalone server (moto[server], from PyPI), run as a process.

moto, not s3rver (npm): it installs with the rest of requirements-dev.txt, and it enforces IAM and bucket policies
when asked (enforce=True), so a bucket that refuses writes is a real refusal, answered over HTTP as S3 answers it.
Its one gap: with enforcement on it cannot check a presigned URL's signature, so URLs are fetched from a server
without enforcement.
"""

import json
import os
import socket
import subprocess
import sys
import time

import boto3
from botocore.config import Config

from .processes import free_port, spawn

REGION = "us-east-1"


class S3Server:
    def __init__(self, enforce: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ}
        if enforce:  # the first actions (making the user and its key) run unchecked, every later one checked
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        self.proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        self.credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        if enforce:
            iam = self._client("iam")
            iam.create_user(UserName="writer")
            iam.put_user_policy(UserName="writer", PolicyName="all", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
            key = iam.create_access_key(UserName="writer")["AccessKey"]
            self.credentials = {"aws_access_key_id": key["AccessKeyId"],
                                "aws_secret_access_key": key["SecretAccessKey"]}

    def _client(self, service: str = "s3"):
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            config=Config(signature_version="s3v4"), **getattr(self, "credentials", {
                                "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}))

    @property
    def s3(self):
        return self._client()

    def bucket(self, name: str, refused_keys: str | None = None, public: bool = False) -> str:
        """A new bucket. Its policy: with refused_keys (a key pattern, as a policy's Resource writes it), writes to
        those keys are denied; public, anyone may read its objects (as a bucket behind a CDN)."""
        self.s3.create_bucket(Bucket=name)
        statements = []
        if refused_keys:
            statements.append({"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                               "Resource": f"arn:aws:s3:::{name}/{refused_keys}"})
        if public:
            statements.append({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                               "Resource": f"arn:aws:s3:::{name}/*"})
        if statements:
            self.s3.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17",
                                                                      "Statement": statements}))
        return name

    def keys(self, bucket: str) -> list[str]:
        return [item["Key"] for item in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def env(self, bucket: str, **settings: str) -> dict:
        """What an app needs to store into bucket here: the S3_* settings and boto3's own credential variables."""
        return {"S3_BUCKET": bucket, "S3_ENDPOINT_URL": self.url, "S3_REGION": REGION,
                "AWS_ACCESS_KEY_ID": self.credentials["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": self.credentials["aws_secret_access_key"], **settings}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
