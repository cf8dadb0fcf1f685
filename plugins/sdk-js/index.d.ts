// Types of the kiln-plugin API. The contract's own types (requests, responses, levels,
// error cases) come from `build/types/` beside this file, which `kiln plugin build`
// generates from `wit/plugin.wit` with jco guest-types: build once and editors see them.
/// <reference path="./build/types/job-plugin.d.ts" />

import type { Job as ContractJob, JobError as ContractJobError, PluginInfo } from 'kiln:plugin/types@0.2.0';
import type {
  Embeddings as ContractEmbeddings,
  FinishReason,
  LlmError as ContractLlmError,
  Request,
  Role,
  ToolCall as ContractToolCall,
} from 'kiln:plugin/llm@0.2.0';
import type { FileInfo as ContractFileInfo, FileError as ContractFileError } from 'kiln:plugin/files@0.2.0';
import type { Level } from 'kiln:plugin/log@0.2.0';

/** `Request` is the contract's request, as the host receives it (what tests inspect). */
export type { FinishReason, Level, PluginInfo, Request, Role };

/** One attempt of one job, with its payload parsed from JSON. */
export type Job<P = unknown> = Omit<ContractJob, 'payload'> & {
  /** The client's payload; it has already passed `payloadSchema`. */
  payload: P;
};

/** A JSON Schema (draft 2020-12) object. */
export type JsonSchema = { [key: string]: unknown };

/** What `defineJobType` takes. */
export interface JobTypeDefinition<P = any, R = unknown> extends Pick<PluginInfo, 'name' | 'version'> {
  /** One or two sentences for humans: what a job of this type produces. */
  description?: PluginInfo['description'];
  /** The payload's JSON Schema. The host validates every payload against it before the
   * job exists; make it precise (`required`, bounds, `additionalProperties: false`). */
  payloadSchema: JsonSchema;
  /** Wall-clock budget of one attempt, in seconds; 0 (the default) = the host default. */
  timeoutSecs?: PluginInfo['defaultTimeoutSecs'];
  /** Runs one attempt and returns the result, any JSON value (a promise of one is fine).
   * Throw `InvalidInput`, `Retryable` or `Permanent` to fail; anything else uncaught
   * fails the job as permanent with its message and stack. */
  run(job: Job<P>): R | Promise<R>;
}

/** A declared job type; default-export it from `src/job.js`. */
export type JobType<P = any, R = unknown> = Readonly<Required<JobTypeDefinition<P, R>>>;

/** Declares the job type: `export default defineJobType({...})`. Checks the definition
 * at once, which in the component means at build time. */
export function defineJobType<P = any, R = unknown>(definition: JobTypeDefinition<P, R>): JobType<P, R>;

/** Why a job failed; throw a subclass from `run`. */
export class JobError extends Error {
  /** The contract's `job-error` case. */
  readonly kind: ContractJobError['tag'];
}
/** The payload is unusable even though it passed the schema (a file that does not parse,
 * say). Not retried. */
export class InvalidInput extends JobError {}
/** A transient failure (upstream outage, rate limit). Retried with backoff while attempts remain. */
export class Retryable extends JobError {}
/** The job cannot succeed. Not retried. */
export class Permanent extends JobError {}

/** A failed LLM call. Uncaught, a transient one fails the job as retryable, `rejected` as permanent. */
export class LlmError extends Error {
  constructor(kind: ContractLlmError['tag'], message: string);
  /** The contract's `llm-error` case. */
  readonly kind: ContractLlmError['tag'];
  /** The provider's or host's message, without the "LLM call ...:" prefix. */
  readonly detail: string;
  /** True for rate-limited, timeout and unavailable: a later retry may succeed. */
  readonly transient: boolean;
}

/** Why a file cannot be read: the contract's `file-error` cases, and the SDK's `too-large`. */
export type FileErrorKind = ContractFileError['tag'] | 'too-large';

/** An input file that cannot be read. Uncaught, `unavailable` fails the job as retryable,
 * `not-found` and `too-large` as invalid input. */
export class FileError extends Error {
  constructor(kind: FileErrorKind, message: string);
  readonly kind: FileErrorKind;
  /** The host's or SDK's message, without the "file ...:" prefix. */
  readonly detail: string;
  /** True for `unavailable`: a later retry may succeed. */
  readonly transient: boolean;
}

/** Reports progress, 0 to 100 (rounded down, clamped), with a short stage message. */
export function progress(percent: number, message: string): void;
/** Emits one finished item as a `partial` event; `data` is sent as JSON. */
export function partial(name: string, data: unknown): void;
/** True once a client asked to cancel this job. */
export function cancelled(): boolean;
/** `stageMessage("Generated names", 3, 3)` is `"Generated names (3/3)"`. */
export function stageMessage(stage: string, done: number, total: number): string;

/** Progress over `items × steps` units of work, reported as percent. */
export class Progress {
  constructor(items: number, steps?: number);
  readonly items: number;
  readonly total: number;
  readonly done: number;
  /** `done * 100 / total`, rounded down; 100 when there is nothing to do. */
  readonly percent: number;
  /** Records `units` more done and reports the new percent with `message`. */
  advance(units: number, message: string): void;
  /** Records one step done for every item, reported as `"{stage} (N/N)"`. */
  stepDone(stage: string): void;
}

/** A tool call as it is sent back in a conversation: the contract's `tool-call`, whose
 * `arguments` may also be given as an object (sent as JSON text). */
export interface ToolCallInput {
  id: string;
  name: string;
  arguments: string | { [key: string]: unknown };
}

/** One chat message. */
export interface Message {
  role: Role;
  /** The text; for a `tool` message, the tool's result (JSON text or plain text). */
  content: string;
  /** For an `assistant` message that called tools: the calls, as the response gave them. */
  toolCalls?: ToolCallInput[];
  /** For a `tool` message: the id of the call it answers. */
  toolCallId?: string;
}

/** A tool the model may call. */
export interface Tool {
  /** Letters, digits, `_` and `-`, at most 64. */
  name: string;
  /** What it does, for the model. */
  description?: string;
  /** JSON Schema of its arguments (an object schema). */
  parameters: JsonSchema;
}

/** A tool the model asked to be run. */
export interface ToolCall<A = any> extends ContractToolCall {
  /** The provider's id of the call; answer it with `llm.withToolResult`. */
  id: string;
  /** The tool's name, one of the request's `tools`. */
  name: string;
  /** The arguments as JSON text of an object (the host checked that it parses). */
  arguments: string;
  /** The arguments parsed. Validate them yourself: the host only checks that they parse. */
  args: A;
}

/** A finished completion. */
export interface Response {
  /** The model's output text (JSON text when the request asked for JSON). May be empty
   * when the model only called tools. */
  text: string;
  /** The tools the model asked to be run, in order. */
  toolCalls: ToolCall[];
  /** Why the model stopped: `stop`, `length`, `tool-calls` (answer them and call again)
   * or `other`. */
  finishReason: FinishReason;
  /** The concrete model that answered, e.g. `gpt-4o-mini` or `offline`. */
  model: string;
  /** Prompt tokens, cached ones included. */
  inputTokens: number;
  /** Output tokens, reasoning ones included. */
  outputTokens: number;
  /** Prompt tokens the provider served from its prompt cache. */
  cachedInputTokens: number;
  /** Output tokens spent on hidden reasoning. */
  reasoningTokens: number;
}

/** Vectors for texts, as `llm.embed` resolves. */
export interface Embeddings extends Omit<ContractEmbeddings, 'vectors'> {
  /** One vector per text, in order. */
  vectors: number[][];
  /** The concrete model that answered. */
  model: string;
  /** Input tokens the provider counted. */
  inputTokens: number;
}

/** One LLM request. Messages go in the order system, `messages`, user. */
export interface LlmOptions {
  /** Instructions for the model, sent first. */
  system?: string;
  /** The user message, sent last. */
  user?: string;
  /** Earlier turns, between `system` and `user`. */
  messages?: Message[];
  /** A model alias from the operator's `[models]` table; `default` when left out. */
  model?: Request['model'];
  /** Upper bound on output tokens. */
  maxTokens?: Request['maxTokens'];
  /** Sampling temperature. */
  temperature?: Request['temperature'];
  /** Ask for a JSON object (the provider's JSON mode). Parse the text with `parseJson`. */
  json?: boolean;
  /** The answer must match this JSON Schema: the host uses the provider's structured-output
   * mode, validates the answer, asks once more when it misses, and fails the call with
   * `rejected` when the second answer misses too. Wins over `json`. */
  schema?: JsonSchema;
  /** The schema's name, for providers that want one (letters, digits, `_`, `-`). Default "answer". */
  schemaName?: string;
  /** Tools the model may call. A response with `toolCalls` is answered with
   * `llm.withToolCalls` and `llm.withToolResult`, then a new call. */
  tools?: Tool[];
  /** Stream the output's tokens to SSE clients under this label, e.g. "relic-2/name". */
  stream?: Request['streamLabel'];
}

export type Settled<T> = { status: 'fulfilled'; value: T } | { status: 'rejected'; reason: LlmError };

/** Parses a model's JSON answer (also inside a ```json fence or surrounded by prose).
 * Throws a SyntaxError when nothing parses, unless a `fallback` is given. */
export function parseJson<T = any>(text: string): T;
export function parseJson<T = any, F = T>(text: string, fallback: F): T | F;

export const llm: {
  /** Runs one completion. Rejects with an `LlmError`. */
  complete(options: LlmOptions): Promise<Response>;
  /** Runs several completions concurrently (under the providers' limits), answers in
   * order. Rejects with an `LlmError` if any failed (a permanent one before a transient). */
  completeAll(requests: Iterable<LlmOptions>): Promise<Response[]>;
  /** Like `completeAll`, but one outcome per request, as `Promise.allSettled` gives. */
  completeAllSettled(requests: Iterable<LlmOptions>): Promise<Settled<Response>[]>;
  /** Embeds `texts` with the model alias `model` (default: the operator's `embedding`
   * alias). An empty list resolves at once without a host call. Rejects with an `LlmError`. */
  embed(texts: Iterable<string>, model?: string): Promise<Embeddings>;
  /** `options` continued with the model's answer (its text and tool calls) as an
   * assistant message; `user` moves into `messages` first. Returns new options. */
  withToolCalls<O extends LlmOptions>(options: O, response: Pick<Response, 'text' | 'toolCalls'>): O;
  /** `options` continued with the result of tool call `call` (or its id): text, or any
   * JSON value (sent as JSON text). Returns new options. */
  withToolResult<O extends LlmOptions>(options: O, call: Pick<ToolCall, 'id'> | string, content: unknown): O;
  parseJson: typeof parseJson;
};

/** What is known about an input file. */
export interface FileInfo extends Omit<ContractFileInfo, 'size'> {
  /** The file id, as in the payload. */
  id: string;
  /** Its size in bytes. */
  size: number;
  /** The content type it was uploaded with, e.g. `application/pdf`. */
  contentType: string;
  /** Its SHA-256, lowercase hex. */
  sha256: string;
}

/** Input files: the uploads the payload names in properties with `"format": "kiln-file"`.
 * Every function rejects with a `FileError` when the file cannot be read. */
export const files: {
  /** Most bytes one host read returns (1 MiB). */
  readonly CHUNK: number;
  /** The file's metadata. */
  stat(id: string): Promise<FileInfo>;
  /** Up to `length` bytes (at most `CHUNK`, the default) from `offset` (default 0): fewer
   * at the end of the file, none past it. One host call. */
  read(id: string, offset?: number, length?: number): Promise<Uint8Array>;
  /** The file from the start, in chunks of at most `CHUNK` bytes: `for await (const chunk of files.chunks(id))`. */
  chunks(id: string): AsyncGenerator<Uint8Array, void, undefined>;
  /** The whole file; rejects with kind `too-large` when it is over `maxBytes`, before reading. */
  readAll(id: string, maxBytes: number): Promise<Uint8Array>;
  /** The whole file decoded as UTF-8 (see `readAll`). */
  readText(id: string, maxBytes: number): Promise<string>;
};

/** An artifact being written piece by piece, from `artifacts.create`. */
export interface ArtifactWriter {
  readonly name: string;
  readonly contentType: string;
  /** Appends `data` (text as UTF-8, or bytes). Throws `Permanent` when the host refuses. */
  write(data: string | ArrayBufferView | ArrayBuffer): void;
}

/** Output files, stored with the job and served at `GET /v1/jobs/{id}/artifacts/{name}`.
 * Only the artifacts of the attempt that completes the job are kept. */
export const artifacts: {
  /** Appends `data` (text as UTF-8, or bytes) to artifact `name` (1 to 128 letters, digits,
   * `.`, `_`, `-`; not starting with `.`), creating it with `contentType` on the first
   * write. Throws `Permanent` for a bad name or a content type other than the first's. */
  write(name: string, contentType: string, data: string | ArrayBufferView | ArrayBuffer): void;
  /** Creates artifact `name` (empty) and returns a writer that appends to it. */
  create(name: string, contentType: string): ArtifactWriter;
};

/** Leveled log lines in the host's log, tagged with the job id. Arguments are joined as
 * console.log does (inside the component, console.* lands here too). */
export const log: { readonly [L in Level]: (...parts: unknown[]) => void };
