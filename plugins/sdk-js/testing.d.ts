// Types of kiln-plugin/testing, the fake host for `node --test`.
import type { JobType, LlmError, PluginInfo, Request, Response } from './index.js';

/** What an LLM call answers in a test: its text, a response, or an error. */
export type FakeAnswer = string | ({ text: string } & Partial<Response>) | LlmError;

export interface RunOptions {
  /** A string for every call, one string per call in order, or a function of the request
   * (as the host receives it) and its 0-based index. Default: "fake answer N". */
  llm?: string | string[] | ((request: Request, index: number) => FakeAnswer | Promise<FakeAnswer>);
  /** What `cancelled()` returns. */
  cancelled?: boolean | (() => boolean);
  id?: string;
  attempt?: number;
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
}

/** Runs one job with a fake host and records what it did. One run at a time. */
export function runJob<P, R>(jobType: JobType<P, R>, payload: P, options?: RunOptions): Promise<JobRun<Awaited<R>>>;

/** The contract's `plugin-info` for a job type. */
export function describeJobType(jobType: JobType): PluginInfo;
