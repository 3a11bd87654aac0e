// Drives the official @fal-ai/client against falq's HTTP gateway; prints one JSON report.
// Usage: node tests/js/gateway_js_client.mjs <gateway base URL> <falq api key>
// Two ways to point the stock client at falq: a requestMiddleware rewriting fal's queue host,
// and fal's own proxy convention (proxyUrl with when: "always", x-fal-target-url).
import { createFalClient } from "@fal-ai/client";

const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error("usage: node gateway_js_client.mjs <gateway-url> <falq-api-key>");
  process.exit(2);
}
const QUEUE = /^https:\/\/queue\.fal\.run/;

const fal = createFalClient({
  credentials: key,
  requestMiddleware: async (request) => ({ ...request, url: request.url.replace(QUEUE, base) }),
});
const proxied = createFalClient({
  credentials: key,
  proxyUrl: { url: `${base}/_falq/fal-proxy`, when: "always" },
});

const T2I = "fal-ai/qwen-image-2/text-to-image";
const report = {};

async function subscribeWithLogs(client) {
  const logs = [];
  const statuses = [];
  const result = await client.subscribe(T2I, {
    input: { prompt: "a paper boat on a pond", seed: 9, image_size: "square" },
    logs: true,
    onQueueUpdate: (update) => {
      statuses.push(update.status);
      (update.logs || []).forEach((log) => logs.push(log.message));
    },
  });
  return { requestId: result.requestId, data: result.data, logs, statuses };
}

// 1. subscribe (polling) with logs, both ways of pointing the client at falq
report.subscribe = await subscribeWithLogs(fal);
report.proxied = await subscribeWithLogs(proxied);

// 2. subscribe in streaming mode (the SSE status stream)
const streamed = [];
const viaStream = await fal.subscribe("fal-ai/qwen-image-2/pro/text-to-image", {
  input: { prompt: "streamed", seed: 1, image_size: "square" },
  logs: true,
  mode: "streaming",
  onQueueUpdate: (update) => streamed.push(update.status),
});
report.streaming = { seed: viaStream.data.seed, image: viaStream.data.images[0], statuses: streamed };

// 3. queue.submit / status / result
const { request_id } = await fal.queue.submit(T2I, { input: { prompt: "queued", seed: 2 }, priority: "low" });
let status;
for (let i = 0; i < 600; i++) {
  status = await fal.queue.status(T2I, { requestId: request_id, logs: true });
  if (status.status === "COMPLETED") break;
  await new Promise((r) => setTimeout(r, 100));
}
const queued = await fal.queue.result(T2I, { requestId: request_id });
report.queue = { requestId: request_id, status, resultRequestId: queued.requestId, seed: queued.data.seed };

// 4. cancel right after submit (it may already be done: both answers are fine for fal's client)
const toCancel = await fal.queue.submit(T2I, { input: { prompt: "cancel me" } });
try {
  await fal.queue.cancel(T2I, { requestId: toCancel.request_id });
  report.cancel = { requestId: toCancel.request_id, ok: true };
} catch (err) {
  report.cancel = { requestId: toCancel.request_id, ok: err.status === 400, status: err.status };
}

// 5. a validation error surfaces as ValidationError (422), nothing enqueued
try {
  await fal.subscribe(T2I, { input: { prompt: "" } });
  report.invalid = { thrown: false };
} catch (err) {
  report.invalid = { thrown: true, name: err.name, status: err.status, body: err.body };
}

console.log(JSON.stringify(report));
