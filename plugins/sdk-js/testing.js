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
  if (typeof llm === 'string') {
    return () => llm;
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
  throw new TypeError('kiln-plugin/testing: llm must be a string, an array of strings or a function (request, index) => answer');
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
  if (typeof response.text !== 'string') {
    throw new TypeError(`kiln-plugin/testing: the answer to LLM request ${index + 1} has no text`);
  }
  return {
    tag: 'ok',
    val: {
      model: 'fake',
      inputTokens: countTokens(prompt),
      outputTokens: countTokens(response.text),
      ...response,
    },
  };
}

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
 *
 * Options: `llm` answers the LLM calls: a string for every call, an array of strings
 * (call i gets answer i), or a function `(request, index) => answer` whose answer is a
 * string, `{text, model?, inputTokens?, outputTokens?}`, or an `LlmError` (returned or
 * thrown), possibly through a promise. Default: "fake answer N". `cancelled` (boolean or
 * function) is what `cancelled()` returns. `id` and `attempt` set the job's fields.
 * Runs one job at a time: await each run before starting the next.
 */
export async function runJob(jobType, payload, options = {}) {
  __runtime.checkDefinition(jobType, 'runJob: the job type');
  if (running) {
    throw new Error('kiln-plugin/testing: runJob is already running a job; await it before starting another');
  }
  const answer = answerer(options.llm);
  const isCancelled = typeof options.cancelled === 'function' ? options.cancelled : () => Boolean(options.cancelled);
  const record = { result: undefined, error: null, progress: [], partials: [], logs: [], requests: [], tokens: {} };
  let lastPercent = 0;

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
