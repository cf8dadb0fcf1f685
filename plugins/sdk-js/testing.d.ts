// Types of kiln-plugin/testing, the fake host for `node --test`.
import type { FinishReason, JobType, LlmError, PluginInfo, Request, Response } from './index.js';

/** A tool call in a fake answer: `id` defaults to `call-{request}-{n}`; `arguments` may be
 * an object or JSON text. It must name a tool the request offers. */
export interface FakeToolCall {
  id?: string;
  name: string;
  arguments?: string | { [key: string]: unknown };
}

/** A fake response: text and/or tool calls, with optional usage and finish reason
 * (`tool-calls` when there are calls, else `stop`). */
export interface FakeResponse extends Partial<Omit<Response, 'toolCalls' | 'finishReason'>> {
  toolCalls?: FakeToolCall[];
  finishReason?: FinishReason;
}

/** What an LLM call answers in a test: its text, a response, or an error. */
export type FakeAnswer = string | FakeResponse | LlmError;

/** An input file in a test: text (`text/plain`), bytes (`application/octet-stream`), or both
 * spelled out. */
export type FakeFile = string | Uint8Array | ArrayBuffer | { contentType?: string; data: string | Uint8Array | ArrayBuffer };

export interface RunOptions {
  /** One answer for every call, one answer per call in order, or a function of the request
   * (as the host receives it) and its 0-based index. Default: "fake answer N". */
  llm?: FakeAnswer | FakeAnswer[] | ((request: Request, index: number) => FakeAnswer | Promise<FakeAnswer>);
  /** The input files `files.*` can read, by id. */
  files?: Record<string, FakeFile>;
  /** Answers `llm.embed`: one vector per text, or an `LlmError` (returned or thrown).
   * Default: deterministic unit vectors of 8 numbers. */
  embed?: (texts: string[], model: string | undefined) => number[][] | LlmError | Promise<number[][] | LlmError>;
  /** What `cancelled()` returns. */
  cancelled?: boolean | (() => boolean);
  id?: string;
  attempt?: number;
}

/** One artifact the job wrote, its appends joined. */
export interface FakeArtifact {
  contentType: string;
  data: Uint8Array;
  /** `data` decoded as UTF-8. */
  text: string;
}

export interface JobRun<R = unknown> {
  /** The result, parsed back from JSON; undefined when the job failed. */
  result: R | undefined;
  /** Null, or the error as clients see it. */
  error: { kind: 'invalid_input' | 'retryable' | 'permanent'; message: string } | null;
  /** Progress reports, clamped and never going down, as the host records them. */
  progress: { percent: number; message: string }[];
  /** Partial results, `data` parsed from JSON. */
  partials: { name: string; data: unknown }[];
  logs: { level: string; message: string }[];
  /** Every LLM request as the host received it, in order. */
  requests: Request[];
  /** `{label: text}`: what SSE clients would have seen streamed under each label. */
  tokens: Record<string, string>;
  /** The texts of every `llm.embed` call, in order. */
  embedded: string[][];
  /** The artifacts written, by name, in the order they were created. */
  artifacts: Record<string, FakeArtifact>;
}

/** Runs one job with a fake host and records what it did. One run at a time. */
export function runJob<P, R>(jobType: JobType<P, R>, payload: P, options?: RunOptions): Promise<JobRun<Awaited<R>>>;

/** The contract's `plugin-info` for a job type. */
export function describeJobType(jobType: JobType): PluginInfo;
