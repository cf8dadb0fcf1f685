// Unit tests: `npm test` (node --test), natively, on the SDK's fake host.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LlmError } from 'kiln-plugin';
import { runJob } from 'kiln-plugin/testing';
import job from '../src/job.js';

test('writes about the topic', async () => {
  const run = await runJob(job, { topic: 'lighthouses' }, { llm: '  Lighthouses keep watch.  ' });

  assert.equal(run.error, null);
  assert.deepEqual(run.result, { topic: 'lighthouses', text: 'Lighthouses keep watch.' });
  assert.match(run.requests[0].messages.at(-1)?.content ?? '', /lighthouses/);
  assert.deepEqual(run.tokens, { text: '  Lighthouses keep watch.  ' });
  assert.deepEqual(run.partials, [{ name: 'text', data: { text: 'Lighthouses keep watch.' } }]);
  assert.deepEqual(run.progress, [
    { percent: 10, message: 'Writing' },
    { percent: 100, message: 'Written' },
  ]);
});

test('an LLM outage fails the attempt as retryable', async () => {
  const run = await runJob(job, { topic: 'lighthouses' }, { llm: () => new LlmError('unavailable', 'provider down') });

  assert.equal(run.error?.kind, 'retryable');
});
