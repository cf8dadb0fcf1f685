// Tests of the SDK itself, natively. Run them from a project that installed the tools, so
// source-map-js is there: `cd plugins/relics && node --test ../sdk-js/tests/sdk.spec.js`.
// Named *.spec.js so that `node --test` in a job type project, which reaches this folder
// through its kiln-plugin/ link, does not pick them up.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  InvalidInput,
  LlmError,
  Permanent,
  Progress,
  Retryable,
  __runtime,
  defineJobType,
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
        { role: 'system', content: 's' },
        { role: 'assistant', content: 'a' },
        { role: 'user', content: 'u' },
      ],
      jsonOutput: true,
      maxTokens: 5,
      streamLabel: 'x',
    },
    { messages: [{ role: 'user', content: 'only' }], jsonOutput: false },
  ]);
  const empty = await runJob(jobOf(() => llm.complete({})), {});
  assert.match(empty.error?.message ?? '', /^TypeError: llm: a request needs at least one message/);
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
