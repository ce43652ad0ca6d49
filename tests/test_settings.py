import re

import pytest

from serverless_sd.settings import Settings
from testkit.processes import ROOT


def test_defaults_are_the_originals(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings.from_env()
    assert settings.model_id == "prompthero/openjourney-v4"
    assert (settings.host, settings.port, settings.log_prompts) == ("0.0.0.0", 8000, False)


def test_read_from_upper_case_environment(monkeypatch):
    monkeypatch.setenv("MODEL_ID", "stabilityai/sdxl-turbo")
    monkeypatch.setenv("MAX_IMAGES", "8")
    monkeypatch.setenv("LOG_PROMPTS", "1")
    settings = Settings.from_env()
    assert (settings.model_id, settings.max_images, settings.log_prompts) == ("stabilityai/sdxl-turbo", 8, True)


def test_a_bad_value_stops_with_the_variables_name(monkeypatch):
    monkeypatch.setenv("PORT", "eighty")
    monkeypatch.setenv("DTYPE", "float8")
    with pytest.raises(SystemExit, match="PORT: .*DTYPE: "):
        Settings.from_env()


def test_the_token_is_never_printed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    assert "hf_abcdef" not in repr(Settings.from_env())


def test_the_operations_page_documents_every_setting():
    table = (ROOT / "docs" / "operations.md").read_text().split("| variable |", 1)[1].split("\n\n", 1)[0]
    documented = {name for row in table.splitlines()[2:] for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])}
    assert documented == {name.upper() for name in Settings.model_fields}
