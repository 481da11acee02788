#!/usr/bin/env python3
"""Routing policy through the official OpenAI and Anthropic Python SDKs.

Run by tests/sdk_clients.rs (`the_official_python_sdks_route_by_request_and_client`),
which starts a gateway whose route `chat` is a/m, b/m, c/m with a/m down; whose client
key --eu-key may only use providers a and c; whose --limited-key may make one request a
minute; whose route `busy` starts on a target held saturated by the Rust side; and whose
routes `gemini-chat` and `mistral-chat` reach the Gemini and Mistral presets.

Checks, each with both SDKs where the SDK can say it: a request's own `fallbacks`
(`extra_body`) walked and shown in `x-airbag-chain`; a fallback outside the client's
providers refused with a 400 naming it; the eu client kept inside its providers while
a/m is down; a 429 with `retry-after` from the client limit; a spill past the saturated
target; the Gemini and Mistral presets answering. Prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import sys

import anthropic
import openai

from clients import TIMEOUT, Run, expect, expect_true, without_upstream_ids

MESSAGES = [{"role": "user", "content": "route me"}]


def openai_fallbacks(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, extra_body={"fallbacks": ["c/m"]}
    )
    expect("served by", raw.headers.get("x-airbag-served-by"), "provider:c/m")
    expect("chain", raw.headers.get("x-airbag-chain"), "a/m, c/m")
    completion = raw.parse()
    expect("content", completion.choices[0].message.content, "mock c answers: route me")
    expect("airbag.chain", (completion.model_extra or {})["airbag"]["chain"], [["a/m"], ["c/m"]])


def anthropic_fallbacks(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="chat", max_tokens=64, messages=MESSAGES, extra_body={"fallbacks": ["c/m"]}
    )
    expect("served by", raw.headers.get("x-airbag-served-by"), "provider:c/m")
    expect("text", raw.parse().content[0].text, "mock c answers: route me")


def openai_refused(client: openai.OpenAI) -> None:
    try:
        client.chat.completions.create(
            model="chat", messages=MESSAGES, extra_body={"fallbacks": ["b/m"]}
        )
    except openai.BadRequestError as error:
        body = error.response.json()["error"]
        expect("param", body["param"], "fallbacks")
        expect_true("the message names b/m", "`b/m`" in body["message"], body["message"])
        return
    raise AssertionError("a fallback outside allowed_providers was accepted")


def anthropic_refused(client: anthropic.Anthropic) -> None:
    try:
        client.messages.create(
            model="chat", max_tokens=64, messages=MESSAGES, extra_body={"fallbacks": ["b/m"]}
        )
    except anthropic.BadRequestError as error:
        body = error.response.json()
        expect("type", body["error"]["type"], "invalid_request_error")
        expect_true("the message names b/m", "`b/m`" in body["error"]["message"], body)
        return
    raise AssertionError("a fallback outside allowed_providers was accepted")


def expect_walk(client: openai.OpenAI, model: str, first: dict, served_by: str) -> None:
    """An OpenAI answer for `model` after the `first` attempt, served by `served_by`."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    expect("served by", raw.headers.get("x-airbag-served-by"), f"provider:{served_by}")
    attempts = without_upstream_ids((raw.parse().model_extra or {})["airbag"]["attempts"])
    expect("attempts", attempts, [first, {"target": served_by, "outcome": "ok"}])


def openai_kept_inside(client: openai.OpenAI) -> None:
    expect_walk(client, "chat", {"target": "a/m", "outcome": "status_503"}, "c/m")


def anthropic_kept_inside(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="chat", max_tokens=64, messages=MESSAGES)
    expect("served by", raw.headers.get("x-airbag-served-by"), "provider:c/m")


def limited(openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    expect("x-ratelimit-limit-requests", raw.headers.get("x-ratelimit-limit-requests"), "1")
    try:
        openai_client.chat.completions.create(model="chat", messages=MESSAGES)
        raise AssertionError("the second request of a 1/minute key was answered")
    except openai.RateLimitError as error:
        retry_after = int(error.response.headers["retry-after"])
        expect_true("openai retry-after in 1..=60", 1 <= retry_after <= 60, retry_after)
        expect("openai error type", error.response.json()["error"]["type"], "rate_limit_error")
    try:
        anthropic_client.messages.create(model="chat", max_tokens=64, messages=MESSAGES)
        raise AssertionError("the third request of a 1/minute key was answered")
    except anthropic.RateLimitError as error:
        expect_true("anthropic retry-after", int(error.response.headers["retry-after"]) >= 1)
        expect("anthropic error type", error.response.json()["error"]["type"], "rate_limit_error")


def openai_spill(client: openai.OpenAI) -> None:
    expect_walk(client, "busy", {"target": "slow/m", "outcome": "saturated"}, "b/m")


def anthropic_spill(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="busy", max_tokens=64, messages=MESSAGES)
    expect("served by", raw.headers.get("x-airbag-served-by"), "provider:b/m")


def openai_presets(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-chat", messages=MESSAGES, extra_body={"store": False}
    )
    expect("gemini served by", raw.headers.get("x-airbag-served-by"), "provider:gemini/gemini-2.5-flash")
    expect("gemini dropped", raw.headers.get("x-airbag-dropped-fields"), "store")
    expect("gemini content", raw.parse().choices[0].message.content, "mock gemini answers: route me")
    stream = client.chat.completions.create(
        model="mistral-chat",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        seed=7,
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    expect("mistral text", text, "mock mistral answers: route me")
    expect_true("mistral usage came back", usage is not None and usage.completion_tokens > 0, usage)


def anthropic_presets(client: anthropic.Anthropic) -> None:
    for model, mock in [("gemini-chat", "gemini"), ("mistral-chat", "mistral")]:
        message = client.messages.create(model=model, max_tokens=64, messages=MESSAGES)
        expect(f"{model} text", message.content[0].text, f"mock {mock} answers: route me")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--free-key", required=True)
    parser.add_argument("--eu-key", required=True)
    parser.add_argument("--limited-key", required=True)
    args = parser.parse_args()

    def clients(key: str) -> tuple[openai.OpenAI, anthropic.Anthropic]:
        # No SDK retries: a 429 or a 400 must reach the check as it came.
        return (
            openai.OpenAI(base_url=f"{args.gateway}/v1", api_key=key, max_retries=0, timeout=TIMEOUT),
            anthropic.Anthropic(base_url=args.gateway, api_key=key, max_retries=0, timeout=TIMEOUT),
        )

    free_openai, free_anthropic = clients(args.free_key)
    eu_openai, eu_anthropic = clients(args.eu_key)
    limited_openai, limited_anthropic = clients(args.limited_key)
    run = Run()
    # The spill first, while the Rust side holds the saturated target's one slot.
    run.check("openai spill past a saturated target", lambda: openai_spill(free_openai))
    run.check("anthropic spill past a saturated target", lambda: anthropic_spill(free_anthropic))
    run.check("openai request fallbacks", lambda: openai_fallbacks(free_openai))
    run.check("anthropic request fallbacks", lambda: anthropic_fallbacks(free_anthropic))
    run.check("openai refused fallback", lambda: openai_refused(eu_openai))
    run.check("anthropic refused fallback", lambda: anthropic_refused(eu_anthropic))
    run.check("openai kept inside allowed providers", lambda: openai_kept_inside(eu_openai))
    run.check("anthropic kept inside allowed providers", lambda: anthropic_kept_inside(eu_anthropic))
    run.check("429 from the client limit", lambda: limited(limited_openai, limited_anthropic))
    run.check("openai gemini and mistral presets", lambda: openai_presets(free_openai))
    run.check("anthropic gemini and mistral presets", lambda: anthropic_presets(free_anthropic))
    print(json.dumps({"passed": len(run.passed), "failed": run.failed, "checks": run.passed}), flush=True)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
