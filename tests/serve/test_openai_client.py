"""The official ``openai`` Python client against the server (the shared tiny-model server of conftest.py):
models, completions and chat, whole and streamed, and its error classes for our error bodies."""

from __future__ import annotations

import httpx
import pytest
from serving import KEY

openai = pytest.importorskip("openai", reason="the openai client is part of the test extra")


@pytest.fixture(scope="module")
def oa(base: str):
    with openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def test_models(oa) -> None:
    models = oa.models.list().data
    assert [m.id for m in models] == ["tiny"] and models[0].object == "model"
    assert oa.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("gpt-4")


def test_completions_whole_and_streamed(oa, client: httpx.Client) -> None:
    raw = client.post("/v1/completions", json={"prompt": "HAMLET.\n", "max_tokens": 10, "temperature": 0}).json()
    whole = oa.completions.create(model="tiny", prompt="HAMLET.\n", max_tokens=10, temperature=0)
    assert whole.choices[0].text == raw["choices"][0]["text"] and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens == raw["usage"]["completion_tokens"] > 0
    stream = oa.completions.create(model="tiny", prompt="HAMLET.\n", max_tokens=10, temperature=0, stream=True,
                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_whole_and_streamed(oa) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is Hamlet?"}]
    whole = oa.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, seed=1)
    msg = whole.choices[0].message
    assert whole.object == "chat.completion" and msg.role == "assistant" and isinstance(msg.content, str)
    assert whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 8
    deltas = list(oa.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                             stream=True))
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas if d.choices) == msg.content
    assert deltas[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_errors_map_to_the_clients_exceptions(oa, base: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny", prompt="x", temperature=5)
    assert e.value.param == "temperature"
    with openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0) as bad, \
            pytest.raises(openai.AuthenticationError):
        bad.models.list()
