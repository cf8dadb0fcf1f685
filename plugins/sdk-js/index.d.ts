// Types of the kiln-plugin API. The contract's own types (requests, responses, levels,
// error cases) come from `build/types/` beside this file, which `kiln plugin build`
// generates from `wit/plugin.wit` with jco guest-types: build once and editors see them.
/// <reference path="./build/types/job-plugin.d.ts" />

import type { Job as ContractJob, JobError as ContractJobError, PluginInfo } from 'kiln:plugin/types@0.1.0';
import type { LlmError as ContractLlmError, Message, Request, Response } from 'kiln:plugin/llm@0.1.0';
import type { Level } from 'kiln:plugin/log@0.1.0';

export type { Message, Request, Response, Level, PluginInfo };

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
/** The payload is unusable even though it passed the schema. Not retried. */
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
  json?: Request['jsonOutput'];
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
  parseJson: typeof parseJson;
};

/** Leveled log lines in the host's log, tagged with the job id. Arguments are joined as
 * console.log does (inside the component, console.* lands here too). */
export const log: { readonly [L in Level]: (...parts: unknown[]) => void };
