// kiln-plugin: write a Kiln job type in JavaScript.
//
// A job type is one `defineJobType({...})` call, default-exported from `src/job.js`.
// `node kiln-plugin/build.mjs NAME.wasm` (run by `kiln plugin build`) bundles it with
// `component.js`, the adapter that talks to the host's `kiln:plugin@0.2.0` imports, and
// turns the bundle into a WebAssembly component with componentize-js.
//
// This module never imports the `kiln:` host modules itself: every host call goes through
// the `host` slot below, which `component.js` fills inside the component and
// `testing.js` fills with a fake in `node --test`. So the same job code runs in both.
//
// Host calls are synchronous in contract 0.2.0. The calls that fetch something (the LLM
// functions, `files`) still return promises, so job code reads like ordinary async
// JavaScript (and keeps working when a later contract makes them truly concurrent); the
// calls that only send something (progress, partials, logs, `artifacts.write`) return
// nothing. componentize-js awaits the promise `run` returns.

/** The host the current job talks to; `null` outside a run. */
let host = null;

/** Rewrites positions in stack text; the component maps bundle lines back to sources. */
let mapStack = (text) => text;

/** Marks objects made by `defineJobType`, so the adapter can refuse anything else. */
const DEFINITION = Symbol('kiln-plugin job type');

const NAME_PATTERN = /^[a-z0-9_-]+$/;
const DEFINITION_KEYS = ['name', 'version', 'description', 'payloadSchema', 'timeoutSecs', 'run'];

function currentHost() {
  if (host === null) {
    throw new Error(
      'kiln-plugin: no host here. Host calls (progress, llm, log, ...) work only while a job ' +
        "runs: inside the component, or in tests through kiln-plugin/testing's runJob.",
    );
  }
  return host;
}

// ---------------------------------------------------------------------------------------
// Declaring a job type

/**
 * Declares the job type. Call it once, as `export default defineJobType({...})` in
 * `src/job.js`. The definition is checked here, which inside the component means at build
 * time: a typo fails `kiln plugin build`, not the first job.
 */
export function defineJobType(definition) {
  if (definition === null || typeof definition !== 'object') {
    throw new TypeError('defineJobType: pass an object {name, version, description, payloadSchema, timeoutSecs, run}');
  }
  const unknown = Object.keys(definition).filter((key) => !DEFINITION_KEYS.includes(key));
  if (unknown.length > 0) {
    throw new TypeError(`defineJobType: unknown field(s) ${unknown.join(', ')}; expected ${DEFINITION_KEYS.join(', ')}`);
  }
  const { name, version, description = '', payloadSchema, timeoutSecs = 0, run } = definition;
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new TypeError(`defineJobType: name must be lowercase letters, digits, '-' or '_', got ${JSON.stringify(name)}`);
  }
  if (typeof version !== 'string' || !/^\d+\.\d+\.\d+/.test(version)) {
    throw new TypeError(`defineJobType: version must be a semver string such as "0.1.0", got ${JSON.stringify(version)}`);
  }
  if (typeof description !== 'string') {
    throw new TypeError('defineJobType: description must be a string');
  }
  if (payloadSchema === null || typeof payloadSchema !== 'object' || Array.isArray(payloadSchema)) {
    throw new TypeError('defineJobType: payloadSchema must be a JSON Schema object, e.g. {type: "object", ...}');
  }
  if (!Number.isInteger(timeoutSecs) || timeoutSecs < 0 || timeoutSecs > 0xffff_ffff) {
    throw new TypeError('defineJobType: timeoutSecs must be a whole number of seconds (0 = host default)');
  }
  if (typeof run !== 'function') {
    throw new TypeError('defineJobType: run must be a function (job) => result');
  }
  return Object.freeze({
    [DEFINITION]: true,
    name,
    version,
    description,
    payloadSchema,
    timeoutSecs,
    run,
  });
}

// ---------------------------------------------------------------------------------------
// Errors

/**
 * Why a job failed. Throw one of the three subclasses from `run`; the class decides what
 * the host does next. Any other uncaught exception fails the job as permanent.
 */
export class JobError extends Error {
  /** The contract's `job-error` case: `invalid-input`, `retryable` or `permanent`. */
  get kind() {
    return 'permanent';
  }
}

/** The payload is unusable even though it passed the schema (a file that does not parse,
 * say). Not retried. */
export class InvalidInput extends JobError {
  get kind() {
    return 'invalid-input';
  }
}

/** A transient failure (an upstream outage, a rate limit). Retried with backoff. */
export class Retryable extends JobError {
  get kind() {
    return 'retryable';
  }
}

/** The job cannot succeed. Not retried. */
export class Permanent extends JobError {
  get kind() {
    return 'permanent';
  }
}

for (const cls of [JobError, InvalidInput, Retryable, Permanent]) {
  Object.defineProperty(cls.prototype, 'name', { value: cls.name });
}

const LLM_KIND_TEXT = {
  'rate-limited': 'rate limited',
  timeout: 'timed out',
  unavailable: 'unavailable',
  rejected: 'rejected',
};

/**
 * A failed LLM call. `kind` is the contract's `llm-error` case. Left uncaught, a
 * transient one (rate-limited, timeout, unavailable) fails the job as retryable and a
 * rejected one (an unknown model alias, a prompt too long, an answer that twice missed
 * its schema) as permanent, so catch it only to do better than that.
 */
export class LlmError extends Error {
  constructor(kind, message) {
    super(`LLM call ${LLM_KIND_TEXT[kind] ?? kind}: ${message}`);
    this.kind = kind;
    /** The provider's or the host's own words, without the prefix. */
    this.detail = message;
  }

  /** True when retrying the job later may succeed. */
  get transient() {
    return this.kind !== 'rejected';
  }
}
Object.defineProperty(LlmError.prototype, 'name', { value: 'LlmError' });

const FILE_KIND_TEXT = {
  'not-found': 'not found',
  unavailable: 'unavailable',
  'too-large': 'too large',
};

/**
 * An input file that cannot be read. `kind` is the contract's `file-error` case
 * (`not-found`, `unavailable`) or the SDK's `too-large` (over the bound given to
 * `files.readAll`). Left uncaught, `unavailable` fails the job as retryable and the other
 * two as invalid input: the payload named a file the job cannot use.
 */
export class FileError extends Error {
  constructor(kind, message) {
    super(`file ${FILE_KIND_TEXT[kind] ?? kind}: ${message}`);
    this.kind = kind;
    /** The host's own words, without the prefix. */
    this.detail = message;
  }

  /** True when retrying the job later may succeed. */
  get transient() {
    return this.kind === 'unavailable';
  }
}
Object.defineProperty(FileError.prototype, 'name', { value: 'FileError' });

// ---------------------------------------------------------------------------------------
// Progress, partial results, cancellation

/**
 * Reports overall progress, 0 to 100 (rounded down and clamped), with a short message
 * naming the stage. Every call is an SSE event: report after real work, not in a loop.
 */
export function progress(percent, message) {
  const value = Math.max(0, Math.min(100, Math.floor(Number(percent) || 0)));
  currentHost().report(value, String(message));
}

/**
 * Emits one finished item as a `partial` event `{name, data}`; `data` is sent as JSON.
 * A value JSON cannot represent is logged at error level and not emitted, as in the Rust
 * SDK: a lost preview must not fail the job.
 */
export function partial(name, data) {
  let json;
  try {
    json = JSON.stringify(data);
  } catch (error) {
    log.error(`partial ${JSON.stringify(name)} not emitted: ${error.message}`);
    return;
  }
  if (json === undefined) {
    log.error(`partial ${JSON.stringify(name)} not emitted: ${typeof data} is not JSON`);
    return;
  }
  currentHost().partial(String(name), json);
}

/** True once a client asked to cancel this job: stop early, e.g. `throw new Permanent('cancelled')`. */
export function cancelled() {
  return currentHost().cancelled();
}

/** `"Generated names (3/3)"`: the stage message format of Kiln's bundled job types. */
export function stageMessage(stage, done, total) {
  return `${stage} (${done}/${total})`;
}

/**
 * Tracks progress over `items × steps` units of work, e.g. 3 relics × 3 fields. Percent is
 * `done * 100 / total`, rounded down; 100 when there is nothing to do.
 */
export class Progress {
  constructor(items, steps = 1) {
    this.items = items;
    this.total = items * steps;
    this.done = 0;
  }

  get percent() {
    return this.total <= 0 ? 100 : Math.min(100, Math.floor((this.done * 100) / this.total));
  }

  /** Records `units` more done and reports the new percent with `message`. */
  advance(units, message) {
    this.done += units;
    progress(this.percent, message);
  }

  /** Records one step done for every item and reports it as `"{stage} (N/N)"`. */
  stepDone(stage) {
    this.advance(this.items, stageMessage(stage, this.items, this.items));
  }
}

// ---------------------------------------------------------------------------------------
// LLM calls

const ROLES = ['system', 'user', 'assistant', 'tool'];
const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** A tool call as the contract carries it; `arguments` given as an object become JSON text. */
function toContractCall(call) {
  if (call === null || typeof call !== 'object') {
    throw new TypeError('llm: a tool call must be an object {id, name, arguments}');
  }
  const args = typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments ?? {});
  return { id: String(call.id), name: String(call.name), arguments: args };
}

/** A message as the contract carries it, from `{role, content, toolCalls?, toolCallId?}`. */
function toContractMessage(message) {
  if (message === null || typeof message !== 'object' || !ROLES.includes(message.role)) {
    throw new TypeError(`llm: each message is {role, content} with role ${ROLES.join(', ')}; got ${JSON.stringify(message)}`);
  }
  const converted = {
    role: message.role,
    content: String(message.content ?? ''),
    toolCalls: Array.from(message.toolCalls ?? [], toContractCall),
  };
  // Optional contract fields are left out rather than set to undefined.
  if (message.toolCallId !== undefined) converted.toolCallId = String(message.toolCallId);
  return converted;
}

/** A tool as the contract carries it, from `{name, description, parameters}`. */
function toContractTool(tool) {
  const { name, description = '', parameters } = tool ?? {};
  if (typeof name !== 'string' || !TOOL_NAME.test(name)) {
    throw new TypeError(`llm: a tool name is 1 to 64 letters, digits, '_' or '-', got ${JSON.stringify(name)}`);
  }
  if (parameters === null || typeof parameters !== 'object' || Array.isArray(parameters)) {
    throw new TypeError(`llm: tool ${name}: parameters must be a JSON Schema object, e.g. {type: "object", ...}`);
  }
  return { name, description: String(description), parameters: JSON.stringify(parameters) };
}

/** The contract's `output` for the `json`, `schema` and `schemaName` options. */
function toOutput(json, schema, schemaName) {
  if (schema !== undefined) {
    if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
      throw new TypeError('llm: schema must be a JSON Schema object, e.g. {type: "object", ...}');
    }
    return { tag: 'json-schema', val: { name: String(schemaName), schema: JSON.stringify(schema) } };
  }
  return { tag: json ? 'json' : 'text' };
}

/**
 * Turns `{system, user, messages, model, maxTokens, temperature, json, schema, schemaName,
 * tools, stream}` into a contract request.
 */
function toRequest(options) {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('llm: pass an object such as {system, user, maxTokens, stream}');
  }
  const {
    system,
    user,
    messages = [],
    model,
    maxTokens,
    temperature,
    json = false,
    schema,
    schemaName = 'answer',
    tools = [],
    stream,
  } = options;
  const all = [];
  if (system !== undefined) all.push(toContractMessage({ role: 'system', content: String(system) }));
  for (const message of messages) all.push(toContractMessage(message));
  if (user !== undefined) all.push(toContractMessage({ role: 'user', content: String(user) }));
  if (all.length === 0) {
    throw new TypeError('llm: a request needs at least one message (system, user or messages)');
  }
  const request = {
    messages: all,
    output: toOutput(json, schema, schemaName),
    tools: Array.from(tools, toContractTool),
  };
  // Optional contract fields are left out rather than set to undefined.
  if (model !== undefined) request.model = String(model);
  if (maxTokens !== undefined) request.maxTokens = maxTokens;
  if (temperature !== undefined) request.temperature = temperature;
  if (stream !== undefined) request.streamLabel = String(stream);
  return request;
}

/** A contract `tool-call` with its arguments also parsed, as `args`. */
function fromContractCall(call) {
  let args;
  try {
    args = JSON.parse(call.arguments);
  } catch {
    args = undefined; // the host checks they parse; a fake may not
  }
  return { id: call.id, name: call.name, arguments: call.arguments, args };
}

/** A contract `response` as the SDK gives it: usage flattened, tool calls parsed. */
function fromContractResponse(response) {
  const usage = response.usage ?? {};
  return {
    text: response.text,
    toolCalls: Array.from(response.toolCalls ?? [], fromContractCall),
    finishReason: response.finishReason,
    model: response.model,
    inputTokens: usage.inputTokens ?? 0,
    outputTokens: usage.outputTokens ?? 0,
    cachedInputTokens: usage.cachedInputTokens ?? 0,
    reasoningTokens: usage.reasoningTokens ?? 0,
  };
}

/** A contract `result<response, llm-error>` as a response or an `LlmError`. */
function settle(result) {
  return result.tag === 'ok' ? fromContractResponse(result.val) : new LlmError(result.val.tag, result.val.val);
}

/** The error to fail with when several calls failed: a permanent one beats a transient one. */
function worstError(errors) {
  return errors.find((error) => !error.transient) ?? errors[0];
}

async function complete(options) {
  const request = toRequest(options);
  const outcome = settle(await currentHost().complete(request));
  if (outcome instanceof LlmError) throw outcome;
  return outcome;
}

async function completeEach(list) {
  const requests = Array.from(list, toRequest);
  if (requests.length === 0) return [];
  const results = await currentHost().completeAll(requests);
  return results.map(settle);
}

async function completeAll(list) {
  const outcomes = await completeEach(list);
  const errors = outcomes.filter((outcome) => outcome instanceof LlmError);
  if (errors.length > 0) throw worstError(errors);
  return outcomes;
}

async function completeAllSettled(list) {
  const outcomes = await completeEach(list);
  return outcomes.map((outcome) =>
    outcome instanceof LlmError ? { status: 'rejected', reason: outcome } : { status: 'fulfilled', value: outcome },
  );
}

/**
 * Parses a model's JSON answer. Models often wrap JSON in a ```json fence or a sentence,
 * so after a plain parse this tries the fenced block, then the outermost `{...}` or
 * `[...]`. Without a `fallback` it throws a SyntaxError quoting the answer; with one it
 * returns the fallback instead (`parseJson(text, text.trim())` keeps plain text).
 */
export function parseJson(text, fallback) {
  const candidates = [text];
  const fenced = /```(?:json)?\s*([\s\S]*?)```/i.exec(text);
  if (fenced) candidates.push(fenced[1]);
  for (const [open, close] of [['{', '}'], ['[', ']']]) {
    const start = text.indexOf(open);
    const end = text.lastIndexOf(close);
    if (start !== -1 && end > start) candidates.push(text.slice(start, end + 1));
  }
  for (const candidate of candidates) {
    try {
      return JSON.parse(candidate);
    } catch {
      // try the next candidate
    }
  }
  if (fallback !== undefined) return fallback;
  const quoted = text.length > 200 ? `${text.slice(0, 200)}...` : text;
  throw new SyntaxError(`the model's answer is not JSON: ${JSON.stringify(quoted)}`);
}

/**
 * The conversation of `options` as one `messages` list: `user`, which goes after
 * `messages`, is moved to the end of it, so more turns can follow. `system` stays.
 */
function conversation(options) {
  const { user, messages = [], ...rest } = options;
  const all = Array.from(messages);
  if (user !== undefined) all.push({ role: 'user', content: String(user) });
  return { ...rest, messages: all };
}

/**
 * `options` continued with the model's answer `response` (its text and tool calls) as an
 * assistant message: the first step of answering tool calls. Add one `withToolResult` per
 * call next, then call the model again. Returns new options; `options` is not changed.
 */
function withToolCalls(options, response) {
  const next = conversation(options);
  const toolCalls = Array.from(response.toolCalls ?? [], toContractCall);
  next.messages.push({ role: 'assistant', content: response.text ?? '', toolCalls });
  return next;
}

/**
 * `options` continued with the result of tool call `call` (a tool call or its id):
 * `content` is text, or any JSON value (sent as JSON text). Returns new options.
 */
function withToolResult(options, call, content) {
  const next = conversation(options);
  const toolCallId = typeof call === 'string' ? call : call?.id;
  if (typeof toolCallId !== 'string') {
    throw new TypeError('llm.withToolResult: pass the tool call (or its id) the result answers');
  }
  const text = typeof content === 'string' ? content : JSON.stringify(content);
  if (text === undefined) {
    throw new TypeError(`llm.withToolResult: the result of ${toolCallId} is not JSON`);
  }
  next.messages.push({ role: 'tool', content: text, toolCallId });
  return next;
}

/**
 * Embeds `texts` with the model alias `model` (default: the operator's `embedding`
 * alias), under the same limits as completions. Resolves to `{vectors, model,
 * inputTokens}`, one vector (an array of numbers) per text, in order. Journaled: a retried
 * job does not pay twice. An empty list resolves at once without a host call.
 */
async function embed(texts, model) {
  if (typeof texts === 'string' || texts === null || typeof texts?.[Symbol.iterator] !== 'function') {
    throw new TypeError('llm.embed: pass an array of texts');
  }
  const list = Array.from(texts, String);
  if (list.length === 0) return { vectors: [], model: '', inputTokens: 0 };
  const result = await currentHost().embed(model === undefined ? undefined : String(model), list);
  if (result.tag === 'err') throw new LlmError(result.val.tag, result.val.val);
  const { vectors, model: answered, inputTokens } = result.val;
  // The contract's list<f32> arrives as a Float32Array, which JSON cannot show as a list.
  return { vectors: vectors.map((vector) => Array.from(vector)), model: answered, inputTokens };
}

/** LLM calls through the operator's providers. */
export const llm = Object.freeze({
  complete,
  completeAll,
  completeAllSettled,
  embed,
  withToolCalls,
  withToolResult,
  parseJson,
});

// ---------------------------------------------------------------------------------------
// Input files

/** Most bytes one host read returns (1 MiB). */
const CHUNK = 1024 * 1024;

/** A contract `result<T, file-error>` as its value, or a thrown `FileError`. */
function fileValue(result) {
  if (result.tag === 'err') throw new FileError(result.val.tag, result.val.val);
  return result.val;
}

/** The file's metadata: `{id, size, contentType, sha256}` (size in bytes, sha256 in hex). */
async function stat(id) {
  const info = fileValue(await currentHost().fileStat(String(id)));
  return { id: info.id, size: Number(info.size), contentType: info.contentType, sha256: info.sha256 };
}

/** Up to `length` bytes (at most 1 MiB) of file `id` from byte `offset`: fewer at the end
 * of the file, none past it. One host call. */
async function read(id, offset = 0, length = CHUNK) {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new TypeError(`files.read: offset and length must be whole numbers, 0 or more; got ${offset}, ${length}`);
  }
  return fileValue(await currentHost().fileRead(String(id), offset, Math.min(length, CHUNK)));
}

/** The file's bytes from the start, as Uint8Array chunks of at most 1 MiB (one host call
 * each): `for await (const chunk of files.chunks(id))`. */
async function* chunks(id) {
  let offset = 0;
  for (;;) {
    const chunk = await read(id, offset);
    if (chunk.length === 0) return;
    offset += chunk.length;
    yield chunk;
  }
}

/** The whole file as a Uint8Array, refused with a `FileError` of kind `too-large` when it
 * is over `maxBytes` (checked before anything is read). */
async function readAll(id, maxBytes) {
  if (typeof maxBytes !== 'number' || !(maxBytes >= 0)) {
    throw new TypeError('files.readAll: pass the most bytes this job accepts, e.g. readAll(id, 16 * 1024 * 1024)');
  }
  const info = await stat(id);
  if (info.size > maxBytes) {
    throw new FileError('too-large', `'${id}' is ${info.size} bytes; this job reads at most ${maxBytes}`);
  }
  const parts = [];
  let size = 0;
  for await (const chunk of chunks(id)) {
    parts.push(chunk);
    size += chunk.length;
  }
  const whole = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    whole.set(part, at);
    at += part.length;
  }
  return whole;
}

/** The whole file decoded as UTF-8 (see `readAll`; bad bytes become U+FFFD). */
async function readText(id, maxBytes) {
  return new TextDecoder().decode(await readAll(id, maxBytes));
}

/**
 * Input files: the uploads the payload names in properties with `"format": "kiln-file"`
 * (the host refuses a payload naming a file that does not exist or belongs to another
 * tenant, and only such files can be read here).
 */
export const files = Object.freeze({ CHUNK, stat, read, chunks, readAll, readText });

// ---------------------------------------------------------------------------------------
// Output files

/** `data` (a string, written as UTF-8, or bytes) as a Uint8Array. */
function toBytes(data) {
  if (typeof data === 'string') return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError(`artifacts: data must be a string or bytes (Uint8Array), got ${typeof data}`);
}

/**
 * Appends `data` (a string, written as UTF-8, or bytes) to artifact `name` (1 to 128
 * letters, digits, `.`, `_`, `-`; not starting with `.`), creating it with `contentType`
 * on the first write. Longer writes are sent in 1 MiB pieces. A bad name, or a content
 * type other than the first write's, throws `Permanent` (a bug in the job type).
 */
function writeArtifact(name, contentType, data) {
  const bytes = toBytes(data);
  let at = 0;
  do {
    const result = currentHost().artifactWrite(String(name), String(contentType), bytes.subarray(at, at + CHUNK));
    if (result.tag === 'err') throw new Permanent(String(result.val));
    at += CHUNK;
  } while (at < bytes.length);
}

/**
 * Creates artifact `name` (empty) and returns a writer that appends to it: `{name,
 * contentType, write(data)}`.
 */
function createArtifact(name, contentType) {
  writeArtifact(name, contentType, '');
  return Object.freeze({
    name: String(name),
    contentType: String(contentType),
    write(data) {
      writeArtifact(name, contentType, data);
    },
  });
}

/**
 * Output files, stored with the job, listed in its JSON as `artifacts` and served at
 * `GET /v1/jobs/{id}/artifacts/{name}`. Only the artifacts of the attempt that completes
 * the job are kept; the host bounds their total size (`artifact_limit`).
 */
export const artifacts = Object.freeze({ write: writeArtifact, create: createArtifact });

// ---------------------------------------------------------------------------------------
// Logging

/** Joins log arguments the way console.log does for the common cases. */
function formatLogParts(parts) {
  return parts
    .map((part) => {
      if (typeof part === 'string') return part;
      if (part instanceof Error) return describeException(part);
      try {
        return JSON.stringify(part) ?? String(part);
      } catch {
        return String(part);
      }
    })
    .join(' ');
}

function logger(level) {
  return (...parts) => currentHost().log(level, formatLogParts(parts));
}

/** Leveled log lines, written by the host to its log tagged with the job id. */
export const log = Object.freeze({
  trace: logger('trace'),
  debug: logger('debug'),
  info: logger('info'),
  warn: logger('warn'),
  error: logger('error'),
});

// ---------------------------------------------------------------------------------------
// Running a job: shared by component.js and testing.js, not part of the public API.

/** The contract's `plugin-info` for a definition. */
function describe(definition) {
  return {
    name: definition.name,
    version: definition.version,
    description: definition.description,
    payloadSchema: JSON.stringify(definition.payloadSchema),
    defaultTimeoutSecs: definition.timeoutSecs,
  };
}

const MAX_STACK_FRAMES = 20;

/**
 * The frames of a stack worth showing: the job's own, up to where the SDK called `run`,
 * with runs of one repeated frame (deep recursion) folded into one line, at most
 * MAX_STACK_FRAMES lines.
 */
function stackFrames(stack, head) {
  // V8 (Node) starts the stack with the message; SpiderMonkey (the component) does not.
  const body = stack.startsWith(head) ? stack.slice(head.length) : stack;
  const lines = body.split('\n').map((line) => mapStack(line.trim()));
  const end = lines.findIndex((line) => line.includes('runAttempt'));
  const frames = [];
  for (const line of end === -1 ? lines : lines.slice(0, end)) {
    const last = frames.at(-1);
    if (last && last.line === line) last.count += 1;
    else if (line !== '') frames.push({ line, count: 1 });
  }
  const shown = frames
    .slice(0, MAX_STACK_FRAMES)
    .map(({ line, count }) => (count > 1 ? `${line} (${count} times)` : line));
  if (frames.length > MAX_STACK_FRAMES) shown.push(`... ${frames.length - MAX_STACK_FRAMES} more frames`);
  return shown;
}

/** The message an unexpected exception fails the job with: what, then where. */
function describeException(error) {
  if (!(error instanceof Error)) {
    return `uncaught exception: ${formatLogParts([error])}`;
  }
  const head = `${error.name}: ${error.message}`;
  const frames = typeof error.stack === 'string' ? stackFrames(error.stack, head) : [];
  return [head, ...frames].join('\n');
}

/** An exception from `run` as the contract's `job-error`. */
function toJobError(error) {
  if (error instanceof JobError) {
    return { tag: error.kind, val: error.message };
  }
  if (error instanceof LlmError) {
    return { tag: error.transient ? 'retryable' : 'permanent', val: error.message };
  }
  if (error instanceof FileError) {
    return { tag: error.transient ? 'retryable' : 'invalid-input', val: error.message };
  }
  const message = describeException(error);
  try {
    log.error(message);
  } catch {
    // A host that cannot log must not hide the job's own error.
  }
  return { tag: 'permanent', val: message };
}

/**
 * Runs one attempt: parses the payload, calls `run`, serialises the result. Resolves to
 * the contract's `result<string, job-error>` as `{tag, val}`; never rejects.
 */
async function runAttempt(definition, job) {
  let payload;
  try {
    payload = JSON.parse(job.payload);
  } catch (error) {
    return { tag: 'err', val: { tag: 'invalid-input', val: `invalid payload: ${error.message}` } };
  }
  try {
    const result = await definition.run({ id: job.id, jobType: job.jobType, attempt: job.attempt, payload });
    if (result === undefined) {
      throw new Permanent('run returned undefined: return the job result (any JSON value; null for none)');
    }
    let json;
    try {
      json = JSON.stringify(result);
    } catch (error) {
      throw new Permanent(`could not serialise the result as JSON: ${error.message}`);
    }
    if (json === undefined) {
      throw new Permanent(`run returned a ${typeof result}, which is not JSON`);
    }
    return { tag: 'ok', val: json };
  } catch (error) {
    return { tag: 'err', val: toJobError(error) };
  }
}

/** Fails unless `value` came from `defineJobType`; `where` names the module for the message. */
function checkDefinition(value, where) {
  if (value === null || typeof value !== 'object' || value[DEFINITION] !== true) {
    throw new TypeError(`${where} must \`export default defineJobType({...})\` (from 'kiln-plugin')`);
  }
  return value;
}

/**
 * For `component.js` and `testing.js` only. `setHost` returns the host it replaced.
 * @internal
 */
export const __runtime = Object.freeze({
  setHost(next) {
    const previous = host;
    host = next;
    return previous;
  },
  setStackMapper(mapper) {
    mapStack = mapper;
  },
  describe,
  runAttempt,
  checkDefinition,
  formatLogParts,
});
