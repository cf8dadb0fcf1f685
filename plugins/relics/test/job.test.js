// Unit tests of the `relics` job type: `npm test`, natively, on the SDK's fake host.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LlmError } from 'kiln-plugin';
import { describeJobType, runJob } from 'kiln-plugin/testing';
import relics from '../src/job.js';

/** Answers every request with its stream label, so each field shows where it came from. */
const echoLabel = (/** @type {import('kiln-plugin').Request} */ request) => ` ${request.streamLabel} `;

test('writes every relic in three rounds of one request per relic', async () => {
  const run = await runJob(relics, { theme: 'sunken bronze-age archipelago', count: 2 }, { llm: echoLabel });

  assert.equal(run.error, null);
  assert.deepEqual(run.result, [
    { name: 'relic-1/name', description: 'relic-1/description', history: 'relic-1/history' },
    { name: 'relic-2/name', description: 'relic-2/description', history: 'relic-2/history' },
  ]);
  assert.deepEqual(
    run.requests.map((request) => request.streamLabel),
    ['relic-1/name', 'relic-2/name', 'relic-1/description', 'relic-2/description', 'relic-1/history', 'relic-2/history'],
  );
  assert.deepEqual(run.progress, [
    { percent: 33, message: 'Generated names (2/2)' },
    { percent: 66, message: 'Generated descriptions (2/2)' },
    { percent: 100, message: 'Generated histories (2/2)' },
  ]);
  assert.deepEqual(
    run.partials.map((p) => p.name),
    ['relic-1', 'relic-2'],
  );
  assert.deepEqual(run.partials[1].data, run.result?.[1]);
});

test('prompts carry the theme and the earlier fields', async () => {
  const run = await runJob(relics, { theme: 'glass desert' }, { llm: echoLabel });

  assert.equal(run.requests.length, 9); // count defaults to 3
  const history = run.requests.find((request) => request.streamLabel === 'relic-3/history');
  const prompt = history?.messages.at(-1)?.content ?? '';
  assert.match(prompt, /^Theme: glass desert\n/);
  assert.match(prompt, /name: relic-3\/name\ndescription: relic-3\/description\n/);
  assert.match(run.requests[0].messages.at(-1)?.content ?? '', /relic 1 of 3/);
});

test('a transient LLM failure fails the attempt as retryable', async () => {
  const llm = (/** @type {unknown} */ _request, /** @type {number} */ index) =>
    index === 1 ? new LlmError('rate-limited', 'slow down') : 'ok';
  const run = await runJob(relics, { theme: 'glass desert' }, { llm });

  assert.deepEqual(run.error, { kind: 'retryable', message: 'LLM call rate limited: slow down' });
  assert.deepEqual(run.partials, []);
});

test('a cancelled job stops before the next round', async () => {
  const run = await runJob(relics, { theme: 'glass desert' }, { cancelled: true });

  assert.deepEqual(run.error, { kind: 'permanent', message: 'cancelled' });
  assert.equal(run.requests.length, 0);
});

test('the schema matches the characters payload', () => {
  const schema = JSON.parse(describeJobType(relics).payloadSchema);

  assert.deepEqual(schema.required, ['theme']);
  assert.equal(schema.additionalProperties, false);
  assert.deepEqual(schema.properties.count, {
    description: 'How many relics to generate.',
    type: 'integer',
    minimum: 1,
    maximum: 10,
    default: 3,
  });
});
