// Drives the official @fal-ai/client against the falq emulator; prints one JSON report.
// Usage: node tests/js/fal_js_client.mjs <emulator base URL>
// Only the hosts change: a request middleware rewrites fal's hosts to the emulator.
import { createFalClient } from "@fal-ai/client";

const base = process.argv[2];
if (!base) {
  console.error("usage: node fal_js_client.mjs <base-url>");
  process.exit(2);
}
const FAL_HOSTS = /^https:\/\/(queue\.fal\.run|fal\.run|rest\.fal\.ai|rest\.alpha\.fal\.ai)/;

const fal = createFalClient({
  credentials: "js-client-key-0001",
  requestMiddleware: async (request) => ({ ...request, url: request.url.replace(FAL_HOSTS, base) }),
});

const T2I = "fal-ai/qwen-image-2/text-to-image";
const report = {};

// 1. subscribe (polling) with logs
const logs = [];
const statuses = [];
const result = await fal.subscribe(T2I, {
  input: { prompt: "a paper boat on a pond", seed: 9, image_size: "square" },
  logs: true,
  onQueueUpdate: (update) => {
    statuses.push(update.status);
    if (update.status === "IN_PROGRESS") {
      update.logs.map((log) => log.message).forEach((m) => logs.push(m));
    }
  },
});
report.subscribe = { requestId: result.requestId, data: result.data, logs, statuses };

// 2. subscribe in streaming mode (SSE status stream)
const streamed = [];
const viaStream = await fal.subscribe("fal-ai/qwen-image-2/pro/text-to-image", {
  input: { prompt: "streamed", seed: 1, image_size: "square" },
  logs: true,
  mode: "streaming",
  onQueueUpdate: (update) => streamed.push(update.status),
});
report.streaming = { requestId: viaStream.requestId, seed: viaStream.data.seed, statuses: streamed };

// 3. queue.submit / status / result
const { request_id } = await fal.queue.submit(T2I, { input: { prompt: "queued", seed: 2 } });
let status;
for (let i = 0; i < 200; i++) {
  status = await fal.queue.status(T2I, { requestId: request_id, logs: true });
  if (status.status === "COMPLETED") break;
  await new Promise((r) => setTimeout(r, 50));
}
const queued = await fal.queue.result(T2I, { requestId: request_id });
report.queue = { requestId: request_id, status, resultRequestId: queued.requestId, seed: queued.data.seed };

// 4. cancel right after submit
const toCancel = await fal.queue.submit(T2I, { input: { prompt: "cancel me" } });
await fal.queue.cancel(T2I, { requestId: toCancel.request_id });
report.cancel = { requestId: toCancel.request_id, ok: true };

// 5. storage upload (initiate + PUT), then read it back
const url = await fal.storage.upload(new Blob(["hello emulator"], { type: "text/plain" }));
report.upload = { url, body: await (await fetch(url)).text() };

// 6. a validation error surfaces as ValidationError (422)
try {
  await fal.subscribe(T2I, { input: { prompt: "" } });
  report.invalid = { thrown: false };
} catch (err) {
  report.invalid = { thrown: true, name: err.name, status: err.status, body: err.body };
}

console.log(JSON.stringify(report));
