// Tests of the SDK itself, natively. Run them from a project that installed the tools, so
// source-map-js is there: `cd plugins/relics && node --test ../sdk-js/tests/sdk.spec.js`.
// Named *.spec.js so that `node --test` in a job type project, which reaches this folder
// through its kiln-plugin/ link, does not pick them up.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  FileError,
  InvalidInput,
  LlmError,
  Permanent,
  Progress,
  Retryable,
  __runtime,
  artifacts,
  defineJobType,
  files,
  llm,
  log,
  parseJson,
  partial,
  progress,
} from '../index.js';
import { createStackMapper } from '../sourcemap.js';
import { describeJobType, runJob } from '../testing.js';

const schema = { type: 'object' };

/** source-map-js, from the project the tests run in (its pinned devDependency). */
const { SourceMapConsumer } = createRequire(join(process.cwd(), 'package.json'))('source-map-js');

/** A job type whose run is `body`. */
const jobOf = (body) => defineJobType({ name: 'probe', version: '0.1.0', payloadSchema: schema, run: body });

test('defineJobType refuses typos and bad names at once', () => {
  assert.throws(() => defineJobType({ name: 'x', version: '0.1.0', payloadSchema: schema, timeout: 5, run() {} }), /unknown field\(s\) timeout/);
  assert.throws(() => defineJobType({ name: 'Bad Name', version: '0.1.0', payloadSchema: schema, run() {} }), /lowercase/);
  assert.throws(() => defineJobType({ name: 'x', version: 'one', payloadSchema: schema, run() {} }), /semver/);
  assert.throws(() => defineJobType({ name: 'x', version: '0.1.0', payloadSchema: '{}', run() {} }), /JSON Schema object/);
  assert.throws(() => defineJobType({ name: 'x', version: '0.1.0', payloadSchema: schema }), /run must be a function/);
});

test('describe gives the contract plugin-info', () => {
  const job = defineJobType({ name: 'x', version: '1.2.3', description: 'd', payloadSchema: schema, timeoutSecs: 30, run() {} });
  assert.deepEqual(describeJobType(job), {
    name: 'x',
    version: '1.2.3',
    description: 'd',
    payloadSchema: '{"type":"object"}',
    defaultTimeoutSecs: 30,
  });
});

test('each error class maps to its kind; other exceptions are permanent with a stack', async () => {
  const cases = [
    [new InvalidInput('bad'), { kind: 'invalid_input', message: 'bad' }],
    [new Retryable('later'), { kind: 'retryable', message: 'later' }],
    [new Permanent('never'), { kind: 'permanent', message: 'never' }],
    [new LlmError('timeout', 'slow'), { kind: 'retryable', message: 'LLM call timed out: slow' }],
    [new LlmError('rejected', 'no such model'), { kind: 'permanent', message: 'LLM call rejected: no such model' }],
    ['a string', { kind: 'permanent', message: 'uncaught exception: a string' }],
  ];
  for (const [thrown, error] of cases) {
    const run = await runJob(
      jobOf(() => {
        throw thrown;
      }),
      {},
    );
    assert.deepEqual(run.error, error);
  }
  const run = await runJob(
    jobOf(async () => {
      await null;
      return [].missing.field;
    }),
    {},
  );
  assert.equal(run.error?.kind, 'permanent');
  assert.match(run.error?.message ?? '', /^TypeError: Cannot read properties of undefined.*\n.*sdk\.spec\.js:\d+:\d+/s);
  assert.doesNotMatch(run.error?.message ?? '', /runAttempt/, 'SDK frames are cut off');
  assert.deepEqual(run.logs, [{ level: 'error', message: run.error?.message }]);
});

test('a payload that is not JSON is invalid input; results must be JSON', async () => {
  const job = jobOf(() => 1);
  const outcome = await __runtime.runAttempt(job, { id: 'i', jobType: 'probe', payload: '{oops', attempt: 1 });
  assert.equal(outcome.tag, 'err');
  assert.equal(outcome.val.tag, 'invalid-input');
  assert.match(outcome.val.val, /^invalid payload: /);

  assert.match((await runJob(jobOf(() => undefined), {})).error?.message ?? '', /returned undefined/);
  assert.match((await runJob(jobOf(() => ({ n: 1n })), {})).error?.message ?? '', /could not serialise/);
  assert.deepEqual((await runJob(jobOf(() => null), {})).result, null);
});

test('the job sees its fields and parsed payload', async () => {
  const run = await runJob(
    jobOf((job) => job),
    { a: [1, 2] },
    { id: 'job-1', attempt: 2 },
  );
  assert.deepEqual(run.result, { id: 'job-1', jobType: 'probe', attempt: 2, payload: { a: [1, 2] } });
});

test('llm requests: message order, optional fields left out', async () => {
  const run = await runJob(
    jobOf(async () => {
      await llm.complete({ system: 's', messages: [{ role: 'assistant', content: 'a' }], user: 'u', maxTokens: 5, json: true, stream: 'x' });
      await llm.complete({ user: 'only' });
      return null;
    }),
    {},
    { llm: 'ok' },
  );
  assert.deepEqual(run.requests, [
    {
      messages: [
        { role: 'system', content: 's', toolCalls: [] },
        { role: 'assistant', content: 'a', toolCalls: [] },
        { role: 'user', content: 'u', toolCalls: [] },
      ],
      output: { tag: 'json' },
      tools: [],
      maxTokens: 5,
      streamLabel: 'x',
    },
    { messages: [{ role: 'user', content: 'only', toolCalls: [] }], output: { tag: 'text' }, tools: [] },
  ]);
  const empty = await runJob(jobOf(() => llm.complete({})), {});
  assert.match(empty.error?.message ?? '', /^TypeError: llm: a request needs at least one message/);
  const badRole = await runJob(jobOf(() => llm.complete({ messages: [{ role: 'robot', content: 'x' }] })), {});
  assert.match(badRole.error?.message ?? '', /^TypeError: llm: each message is \{role, content\}/);
});

const ADD = {
  name: 'add',
  description: 'Adds two integers.',
  parameters: { type: 'object', required: ['a', 'b'], properties: { a: { type: 'integer' }, b: { type: 'integer' } } },
};

/** A tool loop: runs `add` until the model answers in text (at most 4 rounds). */
async function addLoop() {
  let request = { system: 's', user: 'What is 2 + 3?', tools: [ADD] };
  const ran = [];
  for (let round = 0; round < 4; round++) {
    const answer = await llm.complete(request);
    if (answer.toolCalls.length === 0) return { text: answer.text, ran, finish: answer.finishReason };
    request = llm.withToolCalls(request, answer);
    for (const call of answer.toolCalls) {
      ran.push(call.args.a + call.args.b);
      request = llm.withToolResult(request, call, { sum: call.args.a + call.args.b });
    }
  }
  throw new Permanent('still calling tools');
}

test('a JSON Schema and tools go into the request; bad ones are refused', async () => {
  const schema = { type: 'object', required: ['title'] };
  const run = await runJob(
    jobOf(async () => {
      await llm.complete({ user: 'u', json: false, schema, schemaName: 'review', tools: [ADD] });
      await llm.complete({ user: 'u', schema });
      return null;
    }),
    {},
  );
  assert.deepEqual(run.requests[0].output, { tag: 'json-schema', val: { name: 'review', schema: JSON.stringify(schema) } });
  assert.equal(run.requests[1].output.val.name, 'answer');
  assert.deepEqual(run.requests[0].tools, [
    { name: 'add', description: 'Adds two integers.', parameters: JSON.stringify(ADD.parameters) },
  ]);
  for (const [options, pattern] of [
    [{ user: 'u', schema: '{}' }, /schema must be a JSON Schema object/],
    [{ user: 'u', tools: [{ ...ADD, name: 'no spaces' }] }, /a tool name is 1 to 64/],
    [{ user: 'u', tools: [{ ...ADD, parameters: '{}' }] }, /tool add: parameters must be a JSON Schema object/],
  ]) {
    const refused = await runJob(jobOf(() => llm.complete(options)), {});
    assert.match(refused.error?.message ?? '', pattern);
  }
});

test('a tool loop appends the calls and the results to the conversation', async () => {
  const answer = (/** @type {any} */ request) =>
    request.messages.at(-1).role === 'tool' ? '5' : { toolCalls: [{ id: 'c1', name: 'add', arguments: { a: 2, b: 3 } }] };
  const run = await runJob(jobOf(addLoop), {}, { llm: answer });
  assert.deepEqual(run.result, { text: '5', ran: [5], finish: 'stop' });
  assert.deepEqual(run.requests[1].messages, [
    { role: 'system', content: 's', toolCalls: [] },
    { role: 'user', content: 'What is 2 + 3?', toolCalls: [] },
    { role: 'assistant', content: '', toolCalls: [{ id: 'c1', name: 'add', arguments: '{"a":2,"b":3}' }] },
    { role: 'tool', content: '{"sum":5}', toolCalls: [], toolCallId: 'c1' },
  ]);
  assert.equal(run.requests[0].messages.length, 2, 'the first request is not changed');

  const canned = await runJob(jobOf(addLoop), {}, {
    llm: [{ toolCalls: [{ name: 'add', arguments: '{"a": 1, "b": 1}' }, { name: 'add', arguments: { a: 2, b: 2 } }] }, 'done'],
  });
  assert.deepEqual(canned.result?.ran, [2, 4]);
  assert.deepEqual(
    canned.requests[1].messages.slice(-2).map((m) => m.toolCallId),
    ['call-1-1', 'call-1-2'],
  );
  const rogue = await runJob(jobOf(addLoop), {}, { llm: [{ toolCalls: [{ name: 'delete', arguments: {} }] }] });
  assert.match(rogue.error?.message ?? '', /calls tool "delete", which the request does not offer/);
});

test('responses carry usage, the finish reason and parsed tool calls', async () => {
  const run = await runJob(
    jobOf(async () => {
      const answer = await llm.complete({ user: 'hi', tools: [ADD] });
      return answer;
    }),
    {},
    {
      llm: {
        text: 'thinking',
        toolCalls: [{ id: 'c9', name: 'add', arguments: { a: 1, b: 2 } }],
        finishReason: 'length',
        model: 'm',
        inputTokens: 7,
        outputTokens: 3,
        cachedInputTokens: 5,
        reasoningTokens: 2,
      },
    },
  );
  assert.deepEqual(run.result, {
    text: 'thinking',
    toolCalls: [{ id: 'c9', name: 'add', arguments: '{"a":1,"b":2}', args: { a: 1, b: 2 } }],
    finishReason: 'length',
    model: 'm',
    inputTokens: 7,
    outputTokens: 3,
    cachedInputTokens: 5,
    reasoningTokens: 2,
  });
  const plain = await runJob(jobOf(() => llm.complete({ user: 'hi' })), {}, { llm: 'ok' });
  assert.deepEqual(
    [plain.result?.finishReason, plain.result?.toolCalls, plain.result?.cachedInputTokens, plain.result?.model],
    ['stop', [], 0, 'fake'],
  );
});

test('embed records the texts and resolves to plain vectors', async () => {
  const run = await runJob(
    jobOf(async () => {
      const first = await llm.embed(['a lighthouse', 'a ship']);
      const again = await llm.embed(['a lighthouse'], 'small');
      const none = await llm.embed([]);
      return {
        same: JSON.stringify(first.vectors[0]) === JSON.stringify(again.vectors[0]),
        plain: Array.isArray(first.vectors[0]),
        norms: first.vectors.map((v) => Math.round(Math.hypot(...v) * 1000) / 1000),
        model: first.model,
        empty: none.vectors,
      };
    }),
    {},
  );
  assert.deepEqual(run.result, { same: true, plain: true, norms: [1, 1], model: 'fake', empty: [] });
  assert.deepEqual(run.embedded, [['a lighthouse', 'a ship'], ['a lighthouse']]);

  const embed = (/** @type {string[]} */ texts, /** @type {string | undefined} */ model) =>
    model === 'down' ? new LlmError('unavailable', 'no embeddings today') : texts.map((t) => [t.length]);
  const custom = await runJob(jobOf((job) => llm.embed(['abc'], job.payload.model)), { model: 'up' }, { embed });
  assert.deepEqual(custom.result, { vectors: [[3]], model: 'fake', inputTokens: 1 });
  const down = await runJob(jobOf((job) => llm.embed(['abc'], job.payload.model)), { model: 'down' }, { embed });
  assert.deepEqual(down.error, { kind: 'retryable', message: 'LLM call unavailable: no embeddings today' });
  const one = await runJob(jobOf(() => llm.embed('one text')), {});
  assert.match(one.error?.message ?? '', /pass an array of texts/);
});

test('files: stat, read, chunks, readAll and readText', async () => {
  const big = new Uint8Array(1024 * 1024 + 10).map((_, i) => i % 251);
  const run = await runJob(
    jobOf(async () => {
      const info = await files.stat('big');
      const sizes = [];
      for await (const chunk of files.chunks('big')) sizes.push(chunk.length);
      const whole = await files.readAll('big', 2 * 1024 * 1024);
      return {
        info: [info.id, info.size, info.contentType, info.sha256.length],
        sizes,
        same: whole.every((byte, i) => byte === big[i]) && whole.length === big.length,
        middle: Array.from(await files.read('big', 250, 3)),
        past: (await files.read('big', 10 ** 9)).length,
        text: await files.readText('note', 100),
        bytes: Array.from(await files.readAll('raw', 3)),
      };
    }),
    {},
    { files: { big: { contentType: 'text/csv', data: big }, note: 'héllo', raw: new Uint8Array([1, 2, 3]) } },
  );
  assert.deepEqual(run.result, {
    info: ['big', big.length, 'text/csv', 64],
    sizes: [files.CHUNK, 10],
    same: true,
    middle: [250, 0, 1],
    past: 0,
    text: 'héllo',
    bytes: [1, 2, 3],
  });
});

test('a missing or oversized file is invalid input; a FileError can be caught', async () => {
  const missing = await runJob(jobOf(() => files.stat('nope')), {});
  assert.deepEqual(missing.error, { kind: 'invalid_input', message: "file not found: no file 'nope' in this test" });
  const big = await runJob(jobOf(() => files.readAll('f', 4)), {}, { files: { f: '12345' } });
  assert.deepEqual(big.error, { kind: 'invalid_input', message: "file too large: 'f' is 5 bytes; this job reads at most 4" });
  const caught = await runJob(
    jobOf(async () => {
      try {
        await files.readAll('f', 0);
      } catch (error) {
        if (error instanceof FileError) return [error.kind, error.transient, error.detail.length > 0];
      }
      return null;
    }),
    {},
    { files: { f: 'x' } },
  );
  assert.deepEqual(caught.result, ['too-large', false, true]);
  const unavailable = await runJob(jobOf(() => {
    throw new FileError('unavailable', 'disk asleep');
  }), {});
  assert.deepEqual(unavailable.error, { kind: 'retryable', message: 'file unavailable: disk asleep' });
});

test('artifacts: writes append, a writer creates, refused writes are permanent', async () => {
  const run = await runJob(
    jobOf(() => {
      artifacts.write('summary.md', 'text/markdown', '# Title\n');
      artifacts.write('summary.md', 'text/markdown', new TextEncoder().encode('Body\n'));
      artifacts.write('big.bin', 'application/octet-stream', new Uint8Array(files.CHUNK + 5));
      const rows = artifacts.create('rows.csv', 'text/csv');
      rows.write('a,b\n');
      rows.write('1,2\n');
      artifacts.create('empty.txt', 'text/plain');
      return null;
    }),
    {},
  );
  assert.equal(run.error, null);
  assert.deepEqual(Object.keys(run.artifacts), ['summary.md', 'big.bin', 'rows.csv', 'empty.txt']);
  assert.equal(run.artifacts['summary.md'].text, '# Title\nBody\n');
  assert.equal(run.artifacts['summary.md'].contentType, 'text/markdown');
  assert.equal(run.artifacts['big.bin'].data.length, files.CHUNK + 5);
  assert.equal(run.artifacts['rows.csv'].text, 'a,b\n1,2\n');
  assert.equal(run.artifacts['empty.txt'].data.length, 0);

  const retyped = await runJob(
    jobOf(() => {
      artifacts.write('a.txt', 'text/plain', 'x');
      artifacts.write('a.txt', 'text/html', 'y');
    }),
    {},
  );
  assert.deepEqual(retyped.error, { kind: 'permanent', message: "the artifact 'a.txt' was created as text/plain, not text/html" });
  for (const name of ['.hidden', 'a/b', '', 'x'.repeat(129)]) {
    const refused = await runJob(jobOf(() => artifacts.write(name, 'text/plain', '')), {});
    assert.match(refused.error?.message ?? '', /is not allowed/, name);
  }
  const notBytes = await runJob(jobOf(() => artifacts.write('a', 'text/plain', 42)), {});
  assert.match(notBytes.error?.message ?? '', /data must be a string or bytes/);
});

test('completeAll fails with the permanent error first; completeAllSettled keeps each outcome', async () => {
  const answers = (_request, index) =>
    [new LlmError('rate-limited', 'busy'), 'fine', new LlmError('rejected', 'too long')][index];
  const all = await runJob(
    jobOf(() => llm.completeAll([{ user: '1' }, { user: '2' }, { user: '3' }])),
    {},
    { llm: answers },
  );
  assert.deepEqual(all.error, { kind: 'permanent', message: 'LLM call rejected: too long' });

  const settled = await runJob(
    jobOf(async () => {
      const outcomes = await llm.completeAllSettled([{ user: '1' }, { user: '2' }, { user: '3' }]);
      return outcomes.map((o) => (o.status === 'fulfilled' ? o.value.text : `${o.reason.kind}/${o.reason.transient}`));
    }),
    {},
    { llm: answers },
  );
  assert.deepEqual(settled.result, ['rate-limited/true', 'fine', 'rejected/false']);

  const empty = await runJob(jobOf(() => llm.completeAll([])), {});
  assert.deepEqual(empty.result, []);
  assert.equal(empty.requests.length, 0);
});

test('canned answers run out loudly', async () => {
  const run = await runJob(
    jobOf(async () => [await llm.complete({ user: '1' }), await llm.complete({ user: '2' })]),
    {},
    { llm: ['only one'] },
  );
  assert.match(run.error?.message ?? '', /only 1 canned answers given/);
});

test('parseJson finds JSON in fences and prose, or falls back', () => {
  assert.deepEqual(parseJson('{"a": 1}'), { a: 1 });
  assert.deepEqual(parseJson('Here:\n```json\n{"a": [1, 2]}\n```\nDone.'), { a: [1, 2] });
  assert.deepEqual(parseJson('The stats are {"str": 3} as asked.'), { str: 3 });
  assert.deepEqual(parseJson('list: [1, 2, 3].'), [1, 2, 3]);
  assert.throws(() => parseJson('no json here'), /not JSON: "no json here"/);
  assert.equal(parseJson(' plain ', 'plain'), 'plain');
  assert.equal(llm.parseJson, parseJson);
});

test('progress is clamped and never goes down; partials must be JSON', async () => {
  const run = await runJob(
    jobOf(() => {
      progress(33.9, 'a');
      progress(10, 'b');
      progress(250, 'c');
      partial('ok', { x: 1 });
      partial('fn', () => 1);
      return null;
    }),
    {},
  );
  assert.deepEqual(run.progress, [
    { percent: 33, message: 'a' },
    { percent: 33, message: 'b' },
    { percent: 100, message: 'c' },
  ]);
  assert.deepEqual(run.partials, [{ name: 'ok', data: { x: 1 } }]);
  assert.match(run.logs[0].message, /partial "fn" not emitted/);
});

test('Progress reports items × steps rounds', async () => {
  const run = await runJob(
    jobOf(() => {
      const tracker = new Progress(3, 6);
      tracker.stepDone('Generated names');
      tracker.advance(15, 'Done');
      return tracker.percent;
    }),
    {},
  );
  assert.deepEqual(run.progress, [
    { percent: 16, message: 'Generated names (3/3)' },
    { percent: 100, message: 'Done' },
  ]);
  assert.equal(new Progress(0, 3).percent, 100);
});

test('log joins its parts; host calls outside a run explain themselves', async () => {
  const run = await runJob(
    jobOf(() => {
      log.info('count', 3, { a: 1 });
      log.warn('careful');
      return null;
    }),
    {},
  );
  assert.deepEqual(run.logs, [
    { level: 'info', message: 'count 3 {"a":1}' },
    { level: 'warn', message: 'careful' },
  ]);
  assert.throws(() => progress(1, 'x'), /no host here/);
});

test('one run at a time, and the definition must come from defineJobType', async () => {
  let release;
  const slow = jobOf(() => new Promise((resolve) => (release = resolve)));
  const first = runJob(slow, {});
  await assert.rejects(runJob(slow, {}), /already running/);
  await new Promise((resolve) => setImmediate(resolve));
  release(1);
  assert.equal((await first).result, 1);
  await assert.rejects(runJob({ name: 'x', run() {} }, {}), /export default defineJobType/);
});

test('the stack mapper turns bundle positions into source positions', () => {
  // Line 1: column 0 -> a.js 1:1. Line 2: column 0 -> a.js 2:1, column 4 -> b.js 1:3
  // (source +1, line -1, column +2: "ICDE" is 4, 1, -1, 2).
  const map = createStackMapper({ sources: ['src/a.js', 'src/b.js'], mappings: 'AAAA;AACA,ICDE' }, 'build/bundle.js', SourceMapConsumer);
  assert.equal(map('f@build/bundle.js:1:1'), 'f@src/a.js:1:1');
  assert.equal(map('f@build/bundle.js:2:3 g@build/bundle.js:2:9'), 'f@src/a.js:2:1 g@src/b.js:1:3');
  assert.equal(map('f@build/bundle.js:9:1'), 'f@build/bundle.js:9:1', 'unmapped lines stay');
  assert.equal(map('f@other.js:1:1'), 'f@other.js:1:1');
});
