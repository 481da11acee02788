#!/usr/bin/env python3
"""The official OpenAI and Anthropic Python SDKs, pointed at a running airbag.

Run by tests/sdk_clients.rs (which starts the gateway in front of mock providers) with
the interpreter of .venv-sdk (scripts/sdk-venv.sh). It can also be run by hand against
any airbag whose routes lead to `airbag mock-provider` instances:

    .venv-sdk/bin/python tests/sdk/clients.py --gateway http://127.0.0.1:8080 \
        --key KEY --routes '[{"model": "demo", "mock": "mock", ...}]'

Each entry of --routes names a route and what serving it must look like:

    model       the model name the SDKs ask for (an airbag route)
    mock        the mock provider's name, which appears in its deterministic answers
    served_by   the expected `x-airbag-served-by` tag, e.g. "provider:oai/gpt-mock"
    depth       the expected fallback depth
    attempts    the expected `airbag.attempts` list of a non-streaming answer
    attempts_one_of
                instead of `attempts`, the lists any one of which is right (a weighted
                tier draws its order per request)

For every route both SDKs run: a plain answer, a stream, a tool round trip and a streamed
tool round trip; the Anthropic SDK also sends a history with thinking blocks. Streams of
the --broken-routes (same fields) must raise in both SDKs once they break. Then both SDKs
ask for --unknown-model (NotFoundError), use a wrong key when --bad-key is given
(AuthenticationError), and list models.

It prints one JSON summary line on stdout (checks run, requests made per route) and
exits 1 after listing every mismatch on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Callable

import anthropic
import openai

TOOL_RESULT = "17 degrees and dry"
# Per-request timeout in seconds, so a gateway that stops answering fails the run quickly.
TIMEOUT = 30.0

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]

ANTHROPIC_TOOLS = [
    {
        "name": "lookup",
        "description": "Look something up.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]


class Mismatch(Exception):
    """A check that failed: what was expected and what came back."""


def expect(what: str, actual: Any, expected: Any) -> None:
    if actual != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {actual!r}")


def expect_true(what: str, condition: bool, detail: Any = None) -> None:
    if not condition:
        raise Mismatch(f"{what}" + (f" (got {detail!r})" if detail is not None else ""))


class Run:
    """Runs named checks, keeping going after a failure so one run lists them all."""

    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []
        # Requests sent per route, for the Rust test to compare with what the mocks saw.
        self.requests: dict[str, int] = {}

    def count(self, route: str, requests: int = 1) -> None:
        self.requests[route] = self.requests.get(route, 0) + requests

    def check(self, name: str, body: Callable[[], None]) -> None:
        try:
            body()
        except Mismatch as mismatch:
            self.failed.append(f"{name}: {mismatch}")
        except Exception as error:  # An SDK error is a failure of this check, not the run.
            last = traceback.format_exception_only(type(error), error)[-1].strip()
            self.failed.append(f"{name}: {last}")
        else:
            self.passed.append(name)


def attempt_lists(route: dict) -> list[Any]:
    return route.get("attempts_one_of") or [route["attempts"]]


def check_tag_headers(what: str, headers: Any, route: dict) -> None:
    expect(f"{what} x-airbag-rung", headers.get("x-airbag-rung"), "provider")
    expect(f"{what} x-airbag-served-by", headers.get("x-airbag-served-by"), route["served_by"])
    expect(
        f"{what} x-airbag-fallback-depth",
        headers.get("x-airbag-fallback-depth"),
        str(route["depth"]),
    )
    counts = [str(len(attempts)) for attempts in attempt_lists(route)]
    expect_true(
        f"{what} x-airbag-attempts is one of {counts}",
        headers.get("x-airbag-attempts") in counts,
        headers.get("x-airbag-attempts"),
    )


def without_upstream_ids(attempts: Any) -> Any:
    """The attempts list without the providers' request ids, which differ per call."""
    if not isinstance(attempts, list):
        return attempts
    return [
        {key: value for key, value in attempt.items() if key != "upstream_request_id"}
        for attempt in attempts
    ]


def check_tag_body(what: str, extra: dict, route: dict) -> None:
    tag = extra.get("airbag")
    expect_true(f"{what}: the body carries an `airbag` object", isinstance(tag, dict), extra)
    expect(f"{what} airbag.rung", tag.get("rung"), "provider")
    expect(f"{what} airbag.served_by", tag.get("served_by"), route["served_by"])
    expect(f"{what} airbag.fallback_depth", tag.get("fallback_depth"), route["depth"])
    attempts = without_upstream_ids(tag.get("attempts"))
    expect_true(
        f"{what} airbag.attempts is one of {attempt_lists(route)}",
        attempts in attempt_lists(route),
        attempts,
    )


def answer(route: dict, prompt: str) -> str:
    return f"mock {route['mock']} answers: {prompt}"


def read_answer(route: dict) -> str:
    return f"mock {route['mock']} read the tool result: {TOOL_RESULT}"


# ---------------------------------------------------------------------------------------
# OpenAI SDK.


def openai_plain(client: openai.OpenAI, run: Run, route: dict) -> None:
    prompt = f"openai plain via {route['model']}"
    raw = client.chat.completions.with_raw_response.create(
        model=route["model"], messages=[{"role": "user", "content": prompt}]
    )
    run.count(route["model"])
    check_tag_headers("headers", raw.headers, route)
    completion = raw.parse()
    expect("object", completion.object, "chat.completion")
    expect("choices", len(completion.choices), 1)
    choice = completion.choices[0]
    expect("content", choice.message.content, answer(route, prompt))
    expect("role", choice.message.role, "assistant")
    expect("finish_reason", choice.finish_reason, "stop")
    expect_true("usage.prompt_tokens > 0", completion.usage.prompt_tokens > 0, completion.usage)
    expect_true(
        "usage.completion_tokens > 0", completion.usage.completion_tokens > 0, completion.usage
    )
    check_tag_body("body", completion.model_extra or {}, route)


def openai_stream(client: openai.OpenAI, run: Run, route: dict) -> None:
    prompt = f"openai stream via {route['model']}"
    raw = client.chat.completions.with_raw_response.create(
        model=route["model"],
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    run.count(route["model"])
    check_tag_headers("headers", raw.headers, route)
    text = ""
    finish_reasons = []
    usage_chunks = []
    for chunk in raw.parse():
        expect("chunk object", chunk.object, "chat.completion.chunk")
        if chunk.usage is not None:
            usage_chunks.append(chunk)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
    expect("assembled text", text, answer(route, prompt))
    expect("finish reasons", finish_reasons, ["stop"])
    expect("usage chunks", len(usage_chunks), 1)
    usage_chunk = usage_chunks[0]
    expect("usage chunk choices", usage_chunk.choices, [])
    expect_true("stream usage.completion_tokens > 0", usage_chunk.usage.completion_tokens > 0,
                usage_chunk.usage)


def openai_tools(client: openai.OpenAI, run: Run, route: dict) -> None:
    prompt = f"openai tools via {route['model']}"
    messages: list[Any] = [{"role": "user", "content": prompt}]
    first = client.chat.completions.create(
        model=route["model"], messages=messages, tools=OPENAI_TOOLS
    )
    run.count(route["model"])
    choice = first.choices[0]
    expect("first finish_reason", choice.finish_reason, "tool_calls")
    calls = choice.message.tool_calls or []
    expect("tool calls", len(calls), 1)
    call = calls[0]
    expect("tool call type", call.type, "function")
    expect("tool name", call.function.name, "lookup")
    expect("tool arguments", json.loads(call.function.arguments), {"query": prompt})
    expect_true("tool call id", bool(call.id), call.id)
    # The usual app loop: append the assistant message object as the SDK returned it.
    messages.append(choice.message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    second = client.chat.completions.create(
        model=route["model"], messages=messages, tools=OPENAI_TOOLS
    )
    run.count(route["model"])
    expect("second finish_reason", second.choices[0].finish_reason, "stop")
    expect("second content", second.choices[0].message.content, read_answer(route))
    check_tag_body("second body", second.model_extra or {}, route)


def openai_stream_tools(client: openai.OpenAI, run: Run, route: dict) -> None:
    prompt = f"openai stream tools via {route['model']}"
    messages: list[Any] = [{"role": "user", "content": prompt}]
    stream = client.chat.completions.create(
        model=route["model"], messages=messages, tools=OPENAI_TOOLS, stream=True
    )
    run.count(route["model"])
    calls: dict[int, dict] = {}
    finish_reasons = []
    text = ""
    for chunk in stream:
        expect_true("no usage chunk unless asked for", chunk.usage is None, chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    expect("streamed text before the tool call", text, "")
    expect("finish reasons", finish_reasons, ["tool_calls"])
    expect("streamed tool call indexes", sorted(calls), [0])
    call = calls[0]
    expect("streamed tool name", call["name"], "lookup")
    expect("streamed tool arguments", json.loads(call["arguments"]), {"query": prompt})
    expect_true("streamed tool call id", bool(call["id"]), call)
    # The assistant turn as an app assembles it from the stream: its text is "", which an
    # Anthropic upstream would refuse as an empty text block if airbag passed it on.
    messages.append(
        {
            "role": "assistant",
            "content": text,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT})
    stream = client.chat.completions.create(
        model=route["model"], messages=messages, tools=OPENAI_TOOLS, stream=True
    )
    run.count(route["model"])
    text = "".join(
        choice.delta.content or "" for chunk in stream for choice in chunk.choices
    )
    expect("second streamed text", text, read_answer(route))


# ---------------------------------------------------------------------------------------
# Anthropic SDK.


def anthropic_plain(client: anthropic.Anthropic, run: Run, route: dict) -> None:
    prompt = f"anthropic plain via {route['model']}"
    raw = client.messages.with_raw_response.create(
        model=route["model"], max_tokens=200, messages=[{"role": "user", "content": prompt}]
    )
    run.count(route["model"])
    check_tag_headers("headers", raw.headers, route)
    message = raw.parse()
    expect("type", message.type, "message")
    expect("role", message.role, "assistant")
    expect("content block types", [block.type for block in message.content], ["text"])
    expect("text", message.content[0].text, answer(route, prompt))
    expect("stop_reason", message.stop_reason, "end_turn")
    expect_true("usage.input_tokens > 0", message.usage.input_tokens > 0, message.usage)
    expect_true("usage.output_tokens > 0", message.usage.output_tokens > 0, message.usage)
    check_tag_body("body", message.model_extra or {}, route)


def anthropic_stream(client: anthropic.Anthropic, run: Run, route: dict) -> None:
    prompt = f"anthropic stream via {route['model']}"
    with client.messages.stream(
        model=route["model"], max_tokens=200, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        run.count(route["model"])
        check_tag_headers("headers", stream.response.headers, route)
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    expect("text_stream", text, answer(route, prompt))
    expect("final content block types", [block.type for block in final.content], ["text"])
    expect("final text", final.content[0].text, answer(route, prompt))
    expect("final stop_reason", final.stop_reason, "end_turn")
    expect_true("final usage.input_tokens > 0", final.usage.input_tokens > 0, final.usage)
    expect_true("final usage.output_tokens > 0", final.usage.output_tokens > 0, final.usage)


def anthropic_tool_result_turns(first_content: Any, tool_use_id: str) -> list[Any]:
    return [
        {"role": "assistant", "content": first_content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use_id, "content": TOOL_RESULT}
            ],
        },
    ]


def check_tool_use(what: str, message: Any, prompt: str) -> Any:
    expect(f"{what} stop_reason", message.stop_reason, "tool_use")
    uses = [block for block in message.content if block.type == "tool_use"]
    expect(f"{what} tool_use blocks", len(uses), 1)
    use = uses[0]
    expect(f"{what} tool name", use.name, "lookup")
    expect(f"{what} tool input", use.input, {"query": prompt})
    expect_true(f"{what} tool_use id", bool(use.id), use.id)
    return use


def anthropic_tools(client: anthropic.Anthropic, run: Run, route: dict) -> None:
    prompt = f"anthropic tools via {route['model']}"
    messages: list[Any] = [{"role": "user", "content": prompt}]
    first = client.messages.create(
        model=route["model"], max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    )
    run.count(route["model"])
    use = check_tool_use("first", first, prompt)
    # The usual app loop: send the content blocks back as the SDK returned them.
    messages.extend(anthropic_tool_result_turns(first.content, use.id))
    second = client.messages.create(
        model=route["model"], max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    )
    run.count(route["model"])
    expect("second stop_reason", second.stop_reason, "end_turn")
    expect("second content block types", [block.type for block in second.content], ["text"])
    expect("second text", second.content[0].text, read_answer(route))
    check_tag_body("second body", second.model_extra or {}, route)


def anthropic_stream_tools(client: anthropic.Anthropic, run: Run, route: dict) -> None:
    prompt = f"anthropic stream tools via {route['model']}"
    messages: list[Any] = [{"role": "user", "content": prompt}]
    with client.messages.stream(
        model=route["model"], max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        run.count(route["model"])
        first = stream.get_final_message()
    use = check_tool_use("streamed", first, prompt)
    messages.extend(anthropic_tool_result_turns(first.content, use.id))
    with client.messages.stream(
        model=route["model"], max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        run.count(route["model"])
        text = "".join(stream.text_stream)
        second = stream.get_final_message()
    expect("second streamed text", text, read_answer(route))
    expect("second stop_reason", second.stop_reason, "end_turn")


def anthropic_thinking_history(client: anthropic.Anthropic, run: Run, route: dict) -> None:
    prompt = f"anthropic after thinking via {route['model']}"
    # Apps using extended thinking with tools must send the thinking blocks back.
    messages = [
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"},
                {"type": "redacted_thinking", "data": "b3BhcXVl"},
                {"type": "text", "text": "first answer"},
            ],
        },
        {"role": "user", "content": prompt},
    ]
    message = client.messages.create(model=route["model"], max_tokens=200, messages=messages)
    run.count(route["model"])
    expect("text", message.content[0].text, answer(route, prompt))


# ---------------------------------------------------------------------------------------
# A stream that breaks after it started: the SDKs must raise, not return a short answer.


def openai_broken_stream(client: openai.OpenAI, run: Run, route: dict) -> None:
    prompt = f"openai broken stream via {route['model']}"
    raw = client.chat.completions.with_raw_response.create(
        model=route["model"], messages=[{"role": "user", "content": prompt}], stream=True
    )
    run.count(route["model"])
    check_tag_headers("headers", raw.headers, route)
    text = ""
    try:
        for chunk in raw.parse():
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
    except openai.APIError as error:
        expect_true("error says the stream failed", "stream failed" in error.message, error.message)
        expect_true(
            "text before the break is a start of the answer",
            text and answer(route, prompt).startswith(text) and text != answer(route, prompt),
            text,
        )
        return
    raise Mismatch(f"the broken stream ended without openai.APIError after {text!r}")


def anthropic_broken_stream(client: anthropic.Anthropic, run: Run, route: dict) -> None:
    prompt = f"anthropic broken stream via {route['model']}"
    text = ""
    try:
        with client.messages.stream(
            model=route["model"], max_tokens=200, messages=[{"role": "user", "content": prompt}]
        ) as stream:
            run.count(route["model"])
            check_tag_headers("headers", stream.response.headers, route)
            for delta in stream.text_stream:
                text += delta
    except anthropic.APIError as error:
        expect_true("error says the stream failed", "stream failed" in error.message, error.message)
        expect_true(
            "text before the break is a start of the answer",
            text and answer(route, prompt).startswith(text) and text != answer(route, prompt),
            text,
        )
        return
    raise Mismatch(f"the broken stream ended without anthropic.APIError after {text!r}")


# ---------------------------------------------------------------------------------------
# Errors and listings.


def openai_unknown_model(client: openai.OpenAI, model: str) -> None:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as error:
        expect("status", error.status_code, 404)
        expect("x-airbag-error", error.response.headers.get("x-airbag-error"), "unknown_model")
        expect_true("message names the model", model in error.message, error.message)
        return
    raise Mismatch("an unknown model did not raise openai.NotFoundError")


def anthropic_unknown_model(client: anthropic.Anthropic, model: str) -> None:
    try:
        client.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    except anthropic.NotFoundError as error:
        expect("status", error.status_code, 404)
        expect("error type", (error.body or {}).get("error", {}).get("type"), "not_found_error")
        expect_true("message names the model", model in error.message, error.message)
        return
    raise Mismatch("an unknown model did not raise anthropic.NotFoundError")


def openai_bad_key(gateway: str, key: str, model: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError as error:
        expect("status", error.status_code, 401)
        return
    raise Mismatch("a wrong key did not raise openai.AuthenticationError")


def anthropic_bad_key(gateway: str, key: str, model: str) -> None:
    client = anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0, timeout=TIMEOUT)
    try:
        client.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    except anthropic.AuthenticationError as error:
        expect("status", error.status_code, 401)
        return
    raise Mismatch("a wrong key did not raise anthropic.AuthenticationError")


def openai_models(client: openai.OpenAI, routes: list[dict]) -> None:
    ids = {model.id for model in client.models.list()}
    for route in routes:
        expect_true(f"models.list() lists {route['model']}", route["model"] in ids, sorted(ids))


def anthropic_models(client: anthropic.Anthropic, routes: list[dict]) -> None:
    ids = {model.id for model in client.models.list()}
    for route in routes:
        expect_true(f"models.list() lists {route['model']}", route["model"] in ids, sorted(ids))


# ---------------------------------------------------------------------------------------
# Drop-in: the fields and endpoints beyond chat (--drop-in). tests/sdk_clients.rs checks
# what the mocks received.

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def openai_every_field(client: openai.OpenAI, run: Run, model: str, mock: str) -> None:
    prompt = "openai with every field"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": prompt},
        ],
        logprobs=True,
        top_logprobs=2,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        logit_bias={"50256": -100},
        reasoning_effort="low",
        user="user-7",
        metadata={"feature": "sdk"},
        store=False,
        service_tier="auto",
        extra_headers={"x-request-id": "sdk-request-1", "traceparent": TRACEPARENT},
    )
    run.count(model)
    expect("x-request-id echoed", raw.headers.get("x-request-id"), "sdk-request-1")
    upstream_id = raw.headers.get("x-airbag-upstream-request-id") or ""
    expect_true("the provider's request id relayed", upstream_id.startswith("req_mock_"), upstream_id)
    completion = raw.parse()
    expect("text", completion.choices[0].message.content, f"mock {mock} answers: {prompt}")
    logprobs = completion.choices[0].logprobs
    expect_true("logprobs came back", logprobs is not None and bool(logprobs.content), logprobs)
    expect(
        "logprobs tokens",
        "".join(entry.token for entry in logprobs.content),
        completion.choices[0].message.content,
    )
    expect("airbag.request_id", (completion.model_extra or {})["airbag"]["request_id"], "sdk-request-1")


def anthropic_prompt_caching(client: anthropic.Anthropic, run: Run, model: str, mock: str) -> None:
    prompt = "anthropic with prompt caching"
    message = client.messages.create(
        model=model,
        max_tokens=2048,
        system=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "A long shared context.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt, "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "user-7"},
        # This SDK version no longer takes `top_k` as an argument; apps send it this way.
        extra_body={"top_k": 5},
    )
    run.count(model)
    expect("first block", message.content[0].type, "thinking")
    expect_true("the thinking block's signature", bool(message.content[0].signature))
    expect("text", message.content[1].text, f"mock {mock} answers: {prompt}")


def anthropic_count_tokens(client: anthropic.Anthropic, run: Run, model: str) -> None:
    counted = client.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "one two three"}]
    )
    run.count(model)
    expect("input_tokens", counted.input_tokens, 3)


def openai_embeddings(client: openai.OpenAI, run: Run, model: str) -> None:
    # The SDK asks for base64 and decodes it.
    embedded = client.embeddings.create(model=model, input=["a tide", "the moon"])
    run.count(model)
    expect("vectors", len(embedded.data), 2)
    expect("dimensions", [len(item.embedding) for item in embedded.data], [8, 8])
    expect_true("different texts, different vectors", embedded.data[0].embedding != embedded.data[1].embedding)


RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]


def openai_several_answers(client: openai.OpenAI, run: Run, model: str, mock: str) -> None:
    prompt = "two answers please"
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], n=2
    )
    run.count(model, 2)
    expect("choices", [choice.index for choice in completion.choices], [0, 1])
    for choice in completion.choices:
        expect("content", choice.message.content, f"mock {mock} answers: {prompt}")


def responses_plain(client: openai.OpenAI, run: Run, model: str, mock: str) -> None:
    prompt = f"responses plain via {model}"
    response = client.responses.create(model=model, input=prompt, instructions="Be brief.")
    run.count(model)
    expect("object", response.object, "response")
    expect("status", response.status, "completed")
    expect("output_text", response.output_text, f"mock {mock} answers: {prompt}")
    expect("output item", response.output[0].type, "message")
    expect_true("usage.input_tokens > 0", response.usage.input_tokens > 0, response.usage)
    expect_true("usage.output_tokens > 0", response.usage.output_tokens > 0, response.usage)
    expect("airbag tag", (response.model_extra or {})["airbag"]["rung"], "provider")


def responses_stream(client: openai.OpenAI, run: Run, model: str, mock: str) -> None:
    prompt = f"responses stream via {model}"
    deltas = []
    kinds = []
    with client.responses.stream(model=model, input=[{"role": "user", "content": prompt}]) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    run.count(model)
    expect("first events", kinds[:2], ["response.created", "response.in_progress"])
    expect("last event", kinds[-1], "response.completed")
    expect("deltas", "".join(deltas), f"mock {mock} answers: {prompt}")
    expect("final output_text", final.output_text, f"mock {mock} answers: {prompt}")
    expect_true("final usage", final.usage is not None and final.usage.output_tokens > 0, final.usage)


def responses_tools(client: openai.OpenAI, run: Run, model: str, mock: str) -> None:
    prompt = f"responses tools via {model}"
    items: list[Any] = [{"role": "user", "content": prompt}]
    first = client.responses.create(model=model, input=items, tools=RESPONSES_TOOLS)
    run.count(model)
    calls = [item for item in first.output if item.type == "function_call"]
    expect("function calls", len(calls), 1)
    call = calls[0]
    expect("tool name", call.name, "lookup")
    expect("tool arguments", json.loads(call.arguments), {"query": prompt})
    # The documented loop: the output items go back, then the call's output.
    items += first.output
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT})
    second = client.responses.create(model=model, input=items, tools=RESPONSES_TOOLS)
    run.count(model)
    expect("second output_text", second.output_text, f"mock {mock} read the tool result: {TOOL_RESULT}")


def responses_refusals(client: openai.OpenAI, model: str) -> None:
    try:
        client.responses.create(model=model, input="hi", previous_response_id="resp_123")
    except openai.BadRequestError as error:
        expect("param", (error.body or {}).get("param"), "previous_response_id")
    else:
        raise AssertionError("previous_response_id was accepted")
    try:
        client.responses.create(model=model, input="hi", tools=[{"type": "web_search"}])
    except openai.BadRequestError as error:
        expect("param", (error.body or {}).get("param"), "tools[0].type")
    else:
        raise AssertionError("a built-in tool was accepted")


def drop_in_checks(
    run: Run, openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic, drop_in: dict
) -> None:
    run.check(
        "openai every field",
        lambda: openai_every_field(openai_client, run, drop_in["openai_model"], drop_in["openai_mock"]),
    )
    run.check(
        "anthropic prompt caching",
        lambda: anthropic_prompt_caching(
            anthropic_client, run, drop_in["anthropic_model"], drop_in["anthropic_mock"]
        ),
    )
    run.check(
        "anthropic count_tokens",
        lambda: anthropic_count_tokens(anthropic_client, run, drop_in["anthropic_model"]),
    )
    run.check(
        "openai embeddings",
        lambda: openai_embeddings(openai_client, run, drop_in["embeddings_model"]),
    )
    run.check(
        "openai n=2",
        lambda: openai_several_answers(
            openai_client, run, drop_in["anthropic_model"], drop_in["anthropic_mock"]
        ),
    )
    # The Responses API, to a provider of each dialect.
    for model, mock in [
        (drop_in["openai_model"], drop_in["openai_mock"]),
        (drop_in["anthropic_model"], drop_in["anthropic_mock"]),
    ]:
        for name, scenario in [
            ("plain", responses_plain),
            ("stream", responses_stream),
            ("tools", responses_tools),
        ]:
            run.check(
                f"responses {name} via {model}",
                lambda scenario=scenario, model=model, mock=mock: scenario(
                    openai_client, run, model, mock
                ),
            )
    run.check(
        "responses refusals",
        lambda: responses_refusals(openai_client, drop_in["openai_model"]),
    )


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway root, http://HOST:PORT")
    parser.add_argument("--key", required=True, help="an airbag client key")
    parser.add_argument("--routes", required=True, help="JSON list of routes (see above)")
    parser.add_argument(
        "--broken-routes",
        default="[]",
        help="JSON list of routes (same fields) whose streams break after they start",
    )
    parser.add_argument("--unknown-model", default="no-such-model")
    parser.add_argument("--bad-key", help="a key the gateway must refuse with 401")
    parser.add_argument(
        "--drop-in",
        help="JSON object: openai_model, openai_mock, anthropic_model, anthropic_mock and "
        "embeddings_model; runs the drop-in checks (every field, prompt caching, "
        "count_tokens, embeddings, request ids, the Responses API)",
    )
    args = parser.parse_args()
    gateway = args.gateway.rstrip("/")
    routes = json.loads(args.routes)
    broken = json.loads(args.broken_routes)

    # The OpenAI SDK appends /chat/completions to a base URL that includes /v1; the
    # Anthropic SDK appends /v1/messages to the root.
    openai_client = openai.OpenAI(
        base_url=f"{gateway}/v1", api_key=args.key, max_retries=0, timeout=TIMEOUT
    )
    anthropic_client = anthropic.Anthropic(
        base_url=gateway, api_key=args.key, max_retries=0, timeout=TIMEOUT
    )

    run = Run()
    scenarios = [
        ("openai plain", openai_client, openai_plain),
        ("openai stream", openai_client, openai_stream),
        ("openai tools", openai_client, openai_tools),
        ("openai stream tools", openai_client, openai_stream_tools),
        ("anthropic plain", anthropic_client, anthropic_plain),
        ("anthropic stream", anthropic_client, anthropic_stream),
        ("anthropic tools", anthropic_client, anthropic_tools),
        ("anthropic stream tools", anthropic_client, anthropic_stream_tools),
        ("anthropic thinking history", anthropic_client, anthropic_thinking_history),
    ]
    for route in routes:
        for name, client, scenario in scenarios:
            run.check(
                f"{name} via {route['model']}",
                lambda client=client, scenario=scenario, route=route: scenario(client, run, route),
            )
    for route in broken:
        run.check(
            f"openai broken stream via {route['model']}",
            lambda route=route: openai_broken_stream(openai_client, run, route),
        )
        run.check(
            f"anthropic broken stream via {route['model']}",
            lambda route=route: anthropic_broken_stream(anthropic_client, run, route),
        )
    run.check(
        "openai unknown model", lambda: openai_unknown_model(openai_client, args.unknown_model)
    )
    run.check(
        "anthropic unknown model",
        lambda: anthropic_unknown_model(anthropic_client, args.unknown_model),
    )
    if args.bad_key:
        model = routes[0]["model"]
        run.check("openai wrong key", lambda: openai_bad_key(gateway, args.bad_key, model))
        run.check("anthropic wrong key", lambda: anthropic_bad_key(gateway, args.bad_key, model))
    if args.drop_in:
        drop_in_checks(run, openai_client, anthropic_client, json.loads(args.drop_in))
    run.check("openai models.list", lambda: openai_models(openai_client, routes))
    run.check("anthropic models.list", lambda: anthropic_models(anthropic_client, routes))

    summary = {
        "sdks": {"openai": openai.__version__, "anthropic": anthropic.__version__},
        "passed": len(run.passed),
        "failed": run.failed,
        "checks": run.passed,
        "requests_per_route": run.requests,
    }
    print(json.dumps(summary), flush=True)
    if run.failed:
        print(
            f"\nSDK test: {len(run.failed)} of {len(run.failed) + len(run.passed)} checks failed:",
            file=sys.stderr,
        )
        for failure in run.failed:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"SDK test: all {len(run.passed)} checks passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
