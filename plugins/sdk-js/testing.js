// A fake Kiln host for unit tests that run natively with `node --test`, no wasm involved.
//
//   import { runJob } from 'kiln-plugin/testing';
//   import job from '../src/job.js';
//
//   const run = await runJob(job, { names: ['Ada'] }, { llm: 'Hello, Ada!' });
//   assert.deepEqual(run.result, { greetings: ['Hello, Ada!'] });
//
// The job goes through the same code as in the component (payload parsing, result
// serialisation, error mapping), so `run.error.kind` is what a client would see.
//
// Input files, answers that call tools, and what the job wrote or embedded:
//
//   const run = await runJob(job, { file: 'f1' }, {
//     files: { f1: { contentType: 'text/plain', data: 'some text' } },
//     llm: [{ toolCalls: [{ id: 'c1', name: 'add', arguments: { a: 2, b: 3 } }] }, '5'],
//   });
//   assert.equal(run.artifacts['summary.md'].text, '...');
//   assert.deepEqual(run.embedded, [['chunk one', 'chunk two']]);

import { createHash } from 'node:crypto';

import { LlmError, __runtime } from './index.js';

/** The host's `error.kind` for each contract `job-error` case. */
const CLIENT_KIND = { 'invalid-input': 'invalid_input', retryable: 'retryable', permanent: 'permanent' };

let running = false;

/** A rough token count, so usage-minded code sees plausible numbers. */
function countTokens(text) {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** Builds the function that answers one request, from the `llm` option. */
function answerer(llm) {
  if (llm === undefined) {
    return (_request, index) => `fake answer ${index + 1}`;
  }
  if (typeof llm === 'string' || (llm !== null && typeof llm === 'object' && !Array.isArray(llm))) {
    return () => llm; // one answer (text, a response object, an LlmError) for every call
  }
  if (Array.isArray(llm)) {
    return (_request, index) => {
      if (index >= llm.length) {
        throw new Error(`kiln-plugin/testing: LLM request ${index + 1} made, but only ${llm.length} canned answers given`);
      }
      return llm[index];
    };
  }
  if (typeof llm === 'function') {
    return llm;
  }
  throw new TypeError('kiln-plugin/testing: llm must be an answer, an array of answers or a function (request, index) => answer');
}

/** The tool calls of a fake answer as the contract carries them (ids filled in, object
 * arguments as JSON text); they must name tools the request offers, as with the host. */
function toContractCalls(calls, request, index) {
  const offered = request.tools.map((tool) => tool.name);
  return Array.from(calls, (call, i) => {
    if (!offered.includes(call.name)) {
      throw new Error(
        `kiln-plugin/testing: the answer to LLM request ${index + 1} calls tool ${JSON.stringify(call.name)}, ` +
          `which the request does not offer (it offers ${JSON.stringify(offered)})`,
      );
    }
    const args = typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments ?? {});
    return { id: String(call.id ?? `call-${index + 1}-${i + 1}`), name: call.name, arguments: args };
  });
}

/** One answer (text, partial response, LlmError, thrown LlmError) as a contract result. */
async function toResult(answer, request, index) {
  let value;
  try {
    value = await answer(request, index);
  } catch (error) {
    if (error instanceof LlmError) value = error;
    else throw error;
  }
  if (value instanceof LlmError) {
    return { tag: 'err', val: { tag: value.kind, val: value.detail } };
  }
  const prompt = request.messages.map((message) => message.content).join('\n');
  const response = typeof value === 'string' ? { text: value } : { ...value };
  if (response.text === undefined && response.toolCalls !== undefined) response.text = '';
  if (typeof response.text !== 'string') {
    throw new TypeError(`kiln-plugin/testing: the answer to LLM request ${index + 1} has no text (nor toolCalls)`);
  }
  const toolCalls = toContractCalls(response.toolCalls ?? [], request, index);
  return {
    tag: 'ok',
    val: {
      text: response.text,
      toolCalls,
      finishReason: response.finishReason ?? (toolCalls.length > 0 ? 'tool-calls' : 'stop'),
      model: response.model ?? 'fake',
      usage: {
        inputTokens: response.inputTokens ?? countTokens(prompt),
        outputTokens: response.outputTokens ?? countTokens(response.text),
        cachedInputTokens: response.cachedInputTokens ?? 0,
        reasoningTokens: response.reasoningTokens ?? 0,
      },
    },
  };
}

/** One deterministic unit vector of 8 numbers per text: equal texts, equal vectors. */
function unitVectors(texts) {
  return texts.map((text) => {
    const digest = createHash('sha256').update(text).digest();
    const raw = Array.from({ length: 8 }, (_, i) => digest.readUInt32LE(i * 4) / 2 ** 31 - 1);
    const norm = Math.hypot(...raw) || 1;
    return raw.map((x) => x / norm);
  });
}

/** The `files` option as `{id: {contentType, data: Uint8Array}}`. */
function fakeFiles(files = {}) {
  const encoder = new TextEncoder();
  const bytes = (data) => (typeof data === 'string' ? encoder.encode(data) : new Uint8Array(data));
  return new Map(
    Object.entries(files).map(([id, file]) => {
      if (typeof file === 'string') return [id, { contentType: 'text/plain', data: bytes(file) }];
      if (file instanceof Uint8Array || file instanceof ArrayBuffer) {
        return [id, { contentType: 'application/octet-stream', data: bytes(file) }];
      }
      return [id, { contentType: String(file.contentType ?? 'application/octet-stream'), data: bytes(file.data) }];
    }),
  );
}

const ARTIFACT_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;
const FILE_CHUNK = 1024 * 1024;

/**
 * Runs `jobType` (what `defineJobType` returned) on `payload` (a plain object; it is sent
 * as JSON text, as the host does) with a fake host, and returns what happened:
 *
 * - `result`: the job's result, parsed back from JSON (`undefined` when it failed)
 * - `error`: `null`, or `{kind, message}` with `kind` as clients see it: `invalid_input`,
 *   `retryable` or `permanent`
 * - `progress`: `[{percent, message}]`, clamped and never going down, as the host does
 * - `partials`: `[{name, data}]` with `data` parsed from JSON
 * - `logs`: `[{level, message}]`
 * - `requests`: every LLM request as the host received it (`messages`, `maxTokens`,
 *   `streamLabel`, ...), in order
 * - `tokens`: `{label: text}`, what SSE clients would have seen streamed under each label
 * - `embedded`: the texts of every `llm.embed` call, in order
 * - `artifacts`: `{name: {contentType, data, text}}`, appends joined (`data` a
 *   Uint8Array, `text` it decoded as UTF-8), in the order they were created
 *
 * Options: `llm` answers the LLM calls: one answer for every call, an array of answers
 * (call i gets answer i), or a function `(request, index) => answer`. An answer is a
 * string, `{text?, toolCalls?, finishReason?, model?, inputTokens?, outputTokens?,
 * cachedInputTokens?, reasoningTokens?}` (tool calls `{id?, name, arguments}`, arguments
 * as an object or JSON text; they must name tools the request offers), or an `LlmError`
 * (returned or thrown), possibly through a promise. Default: "fake answer N". `files`
 * are the input files by id: text (`text/plain`), bytes, or `{contentType, data}`.
 * `embed` is a function `(texts, model) => vectors` (or an `LlmError`), default
 * deterministic unit vectors of 8 numbers. `cancelled` (boolean or function) is what
 * `cancelled()` returns. `id` and `attempt` set the job's fields. Runs one job at a time:
 * await each run before starting the next.
 */
export async function runJob(jobType, payload, options = {}) {
  __runtime.checkDefinition(jobType, 'runJob: the job type');
  if (running) {
    throw new Error('kiln-plugin/testing: runJob is already running a job; await it before starting another');
  }
  const answer = answerer(options.llm);
  const isCancelled = typeof options.cancelled === 'function' ? options.cancelled : () => Boolean(options.cancelled);
  const files = fakeFiles(options.files);
  const embedder = options.embed ?? unitVectors;
  const record = {
    result: undefined,
    error: null,
    progress: [],
    partials: [],
    logs: [],
    requests: [],
    tokens: {},
    embedded: [],
    artifacts: {},
  };
  let lastPercent = 0;
  const decoder = new TextDecoder();
  const notFound = (id) => ({ tag: 'err', val: { tag: 'not-found', val: `no file '${id}' in this test` } });

  const ask = async (request) => {
    const index = record.requests.length;
    record.requests.push(request);
    const result = await toResult(answer, request, index);
    if (result.tag === 'ok' && request.streamLabel !== undefined) {
      record.tokens[request.streamLabel] = (record.tokens[request.streamLabel] ?? '') + result.val.text;
    }
    return result;
  };
  const fakeHost = {
    report(percent, message) {
      lastPercent = Math.max(lastPercent, Math.min(100, percent));
      record.progress.push({ percent: lastPercent, message });
    },
    partial(name, data) {
      record.partials.push({ name, data: JSON.parse(data) });
    },
    cancelled: () => Boolean(isCancelled()),
    log(level, message) {
      record.logs.push({ level, message });
    },
    complete: ask,
    completeAll: (requests) => Promise.all(requests.map(ask)),
    async embed(model, texts) {
      record.embedded.push([...texts]);
      let vectors;
      try {
        vectors = await embedder(texts, model);
      } catch (error) {
        if (!(error instanceof LlmError)) throw error;
        vectors = error;
      }
      if (vectors instanceof LlmError) return { tag: 'err', val: { tag: vectors.kind, val: vectors.detail } };
      if (!Array.isArray(vectors) || vectors.length !== texts.length) {
        throw new Error(`kiln-plugin/testing: embed must return one vector per text (${texts.length})`);
      }
      const inputTokens = texts.reduce((sum, text) => sum + countTokens(text), 0);
      return { tag: 'ok', val: { vectors: vectors.map((v) => Float32Array.from(v)), model: 'fake', inputTokens } };
    },
    fileStat(id) {
      const file = files.get(id);
      if (!file) return notFound(id);
      const sha256 = createHash('sha256').update(file.data).digest('hex');
      return { tag: 'ok', val: { id, size: BigInt(file.data.length), contentType: file.contentType, sha256 } };
    },
    fileRead(id, offset, length) {
      const file = files.get(id);
      if (!file) return notFound(id);
      const start = Math.min(Number(offset), file.data.length);
      return { tag: 'ok', val: file.data.slice(start, start + Math.min(length, FILE_CHUNK)) };
    },
    artifactWrite(name, contentType, bytes) {
      if (!ARTIFACT_NAME.test(name)) return { tag: 'err', val: `the artifact name ${JSON.stringify(name)} is not allowed` };
      const earlier = record.artifacts[name];
      if (earlier && earlier.contentType !== contentType) {
        return { tag: 'err', val: `the artifact '${name}' was created as ${earlier.contentType}, not ${contentType}` };
      }
      const data = new Uint8Array((earlier?.data.length ?? 0) + bytes.length);
      if (earlier) data.set(earlier.data);
      data.set(bytes, earlier?.data.length ?? 0);
      record.artifacts[name] = { contentType, data, text: decoder.decode(data) };
      return { tag: 'ok', val: undefined };
    },
  };

  running = true;
  const previous = __runtime.setHost(fakeHost);
  try {
    const job = {
      id: options.id ?? '00000000-0000-4000-8000-000000000000',
      jobType: jobType.name,
      payload: JSON.stringify(payload),
      attempt: options.attempt ?? 1,
    };
    const outcome = await __runtime.runAttempt(jobType, job);
    if (outcome.tag === 'ok') {
      record.result = JSON.parse(outcome.val);
    } else {
      record.error = { kind: CLIENT_KIND[outcome.val.tag], message: outcome.val.val };
    }
  } finally {
    __runtime.setHost(previous);
    running = false;
  }
  return record;
}

/** The contract's `plugin-info` for a job type, e.g. to check its payload schema in a test. */
export function describeJobType(jobType) {
  __runtime.checkDefinition(jobType, 'describeJobType: the job type');
  return __runtime.describe(jobType);
}
