"""Client keys against a real gateway process: 401, 403, per-key rates, the admin route, no key leaks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.auth import hash_key
from tests.servers import gateway_process

ALICE = "sk-alice-5f1e0c9a7b3d4e21"
BOB = "sk-bob-9a8b7c6d5e4f3a2b"
ADMIN = "sk-admin-0123456789abcdef"
SECRETS = (ALICE, BOB, ADMIN)


@pytest.fixture(scope="module")
def keyed_gateway(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("keyed")
    siglip = str(model_dirs["siglip"])
    config = {
        "models": [
            {"name": "open-model", "provider": "siglip", "model": siglip},
            {"name": "other-model", "provider": "siglip", "model": siglip, "modalities": ["text"]},
        ],
        "auth": {
            "keys": [
                {"name": "alice", "key_sha256": hash_key(ALICE), "models": ["open-model"]},
                {"name": "bob", "key": BOB, "requests_per_minute": 3},
            ],
            "admin_key_sha256": hash_key(ADMIN),
        },
        "log_level": "debug",
    }
    with gateway_process(config, workdir) as url:
        yield url, workdir


def embed(url: str, key: str | None, model: str = "open-model") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": "hi"}, headers=headers, timeout=30)


def test_a_missing_or_unknown_key_is_401_invalid_api_key(keyed_gateway: tuple[str, Path]) -> None:
    url, _ = keyed_gateway
    for key in (None, "sk-wrong", "Bearer-less"):
        response = embed(url, key)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    assert "sk-wrong" not in embed(url, "sk-wrong").text
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_a_key_limited_to_some_models_gets_403_for_the_others_and_sees_only_its_own(
    keyed_gateway: tuple[str, Path],
) -> None:
    url, _ = keyed_gateway
    assert embed(url, ALICE).status_code == 200
    refused = embed(url, ALICE, model="other-model")
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": "the API key 'alice' may not use model 'other-model'",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {ALICE}"}).json()
    assert [m["id"] for m in listed["data"]] == ["open-model"]
    assert httpx.get(f"{url}/v1/models/other-model", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 403


def test_the_openai_sdk_authenticates_with_its_api_key(keyed_gateway: tuple[str, Path]) -> None:
    url, _ = keyed_gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=ALICE, max_retries=0)
    result = client.embeddings.create(model="open-model", input=["a", "b"])
    assert len(result.data) == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-nope", max_retries=0).embeddings.create(
            model="open-model", input="a"
        )
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="other-model", input="a")


def test_a_key_over_its_rate_gets_429_with_retry_after(keyed_gateway: tuple[str, Path]) -> None:
    url, _ = keyed_gateway
    statuses = [embed(url, BOB, model="other-model").status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200]
    limited = embed(url, BOB, model="other-model")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert embed(url, ALICE).status_code == 200  # another key is not affected


def test_usage_needs_the_admin_key(keyed_gateway: tuple[str, Path]) -> None:
    url, _ = keyed_gateway
    assert httpx.get(f"{url}/v1/usage").status_code == 401
    client_key = httpx.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {ALICE}"})
    assert client_key.status_code == 403
    assert client_key.json()["error"]["code"] == "admin_key_required"
    report = httpx.get(f"{url}/v1/usage?days=3", headers={"Authorization": f"Bearer {ADMIN}"})
    assert report.status_code == 200
    body = report.json()
    assert (body["object"], body["days"], len(body["data"])) == ("usage", 3, 3)
    assert body["total_usd"] == 0  # local models cost nothing
    bad = httpx.get(f"{url}/v1/usage?days=0", headers={"Authorization": f"Bearer {ADMIN}"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "days")


def test_no_key_string_reaches_logs_metrics_or_models(keyed_gateway: tuple[str, Path]) -> None:
    url, workdir = keyed_gateway
    embed(url, ALICE)
    embed(url, "sk-some-guess-123")
    metrics = httpx.get(f"{url}/metrics").text
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {ALICE}"})
    assert models.status_code == 200
    logs = "".join(path.read_text() for path in workdir.glob("*.log"))
    config = "".join(path.read_text() for path in workdir.glob("*.yaml"))
    assert BOB in config  # the one key given as plain text is in the config file, as written
    for secret in (*SECRETS, "sk-some-guess-123"):
        assert secret not in metrics
        assert secret not in models.text
        assert secret not in logs
    assert "POST /v1/embeddings" in logs  # the log was written, with the requests
