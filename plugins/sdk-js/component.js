// The component adapter: the one module that imports the host's `kiln:plugin@0.2.0`
// interfaces. build.mjs bundles it with the project's job module into an entry
//
//   import * as job from '../src/job.js';
//   import { exportJobType } from 'kiln-plugin/component';
//   export const jobType = exportJobType(job.default, 'src/job.js');
//
// and componentize-js binds the `jobType` export to the contract's `job-type` interface.
// Module top level (and so `exportJobType`) runs at build time, in componentize-js's
// Wizer snapshot: a bad definition fails the build.

import { cancelled, partial, report } from 'kiln:plugin/progress@0.2.0';
import { complete, completeAll, embed } from 'kiln:plugin/llm@0.2.0';
import { read as readFile, stat as statFile } from 'kiln:plugin/files@0.2.0';
import { write as writeArtifact } from 'kiln:plugin/artifacts@0.2.0';
import { write } from 'kiln:plugin/log@0.2.0';
import { __runtime } from './index.js';
import { createStackMapper } from './sourcemap.js';
import { SourceMapConsumer } from 'source-map-js';

/** Where build.mjs leaves the bundle's source map (appended after the bundle's code). */
const SOURCE_MAP = Symbol.for('kiln-plugin.sourceMap');

/**
 * Calls `call` (an import that returns `result`) and gives its outcome as a `{tag, val}`
 * result, the shape `complete-all` already returns: componentize-js turns an `err` into a
 * thrown error whose `payload` is the error value.
 */
function resultOf(call) {
  try {
    return { tag: 'ok', val: call() };
  } catch (error) {
    if (error !== null && typeof error === 'object' && 'payload' in error) {
      return { tag: 'err', val: error.payload };
    }
    throw error;
  }
}

/** The host as index.js expects it: every import that returns `result` gives `{tag, val}`. */
const host = {
  report,
  partial,
  cancelled,
  log: write,
  complete: (request) => resultOf(() => complete(request)),
  completeAll,
  embed: (model, texts) => resultOf(() => embed(model, texts)),
  fileStat: (id) => resultOf(() => statFile(id)),
  // `offset` is a u64, which the component model passes as a BigInt.
  fileRead: (id, offset, length) => resultOf(() => readFile(id, BigInt(offset), length)),
  artifactWrite: (name, contentType, bytes) => resultOf(() => writeArtifact(name, contentType, bytes)),
};

/**
 * Sends `console.*` to the host log. The component's stdout and stderr go nowhere (the host
 * gives it no stdio), so without this a `console.log` while debugging would vanish.
 */
function routeConsoleToLog() {
  const levels = { trace: 'trace', debug: 'debug', log: 'info', info: 'info', warn: 'warn', error: 'error' };
  // The engine's other console methods (table, time, ...) stay, writing nowhere.
  globalThis.console ??= {};
  for (const [method, level] of Object.entries(levels)) {
    globalThis.console[method] = (...parts) => write(level, __runtime.formatLogParts(parts));
  }
}

/**
 * Maps `build/bundle.js:L:C` in error stacks back to the project's files. The source map
 * is read on first use: build.mjs appends it after the code that calls exportJobType.
 */
function mapStacksToSources() {
  let mapper = null;
  __runtime.setStackMapper((text) => {
    const table = globalThis[SOURCE_MAP];
    if (!table) return text;
    mapper ??= createStackMapper(table, 'build/bundle.js', SourceMapConsumer);
    return mapper(text);
  });
}

/**
 * The `job-type` export for a definition from `defineJobType`. `where` names the job
 * module in the error raised when it exports something else.
 */
export function exportJobType(definition, where = 'the job module') {
  __runtime.checkDefinition(definition, where);
  __runtime.setHost(host);
  routeConsoleToLog();
  mapStacksToSources();
  const info = __runtime.describe(definition);
  return {
    describe() {
      return info;
    },
    // componentize-js awaits the promise. An `err` leaves as an exception whose own
    // `payload` property is the `job-error` case: the jco convention for `result`
    // returns, the mirror of how `complete` reports an `llm-error`.
    async run(job) {
      const outcome = await __runtime.runAttempt(definition, job);
      if (outcome.tag === 'ok') return outcome.val;
      throw Object.assign(new Error(outcome.val.val), { payload: outcome.val });
    },
  };
}
