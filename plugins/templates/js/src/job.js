// @ts-check
/** `{{name}}`: a Kiln job type. Edit the prompt first, then the payload schema and `run`. */
import { defineJobType, llm, partial, progress } from 'kiln-plugin';

/**
 * @typedef {object} Payload What clients post; `payloadSchema` below is its JSON Schema.
 * @property {string} topic
 * @property {number} [sentences]
 */

// What the model is asked; topic and sentences come from the payload.
const SYSTEM = 'You are a vivid, concise writer.';
/** @param {Payload} payload */
const prompt = ({ topic, sentences = 3 }) => `Write about ${topic} in at most ${sentences} sentences.`;

export default defineJobType({
  name: '{{name}}',
  version: '0.1.0',
  description: 'Writes a short text about a topic.',
  // The JSON Schema of what clients post as `payload`; the host refuses any other.
  payloadSchema: {
    type: 'object',
    required: ['topic'],
    properties: {
      topic: { type: 'string', minLength: 1, maxLength: 200, pattern: '\\S', description: 'What to write about.' },
      sentences: { type: 'integer', minimum: 1, maximum: 10, default: 3, description: 'How long the text may be.' },
    },
    additionalProperties: false,
  },
  timeoutSecs: 120,

  /** @param {import('kiln-plugin').Job<Payload>} job */
  async run(job) {
    progress(10, 'Writing');
    const answer = await llm.complete({
      system: SYSTEM,
      user: prompt(job.payload),
      maxTokens: 400,
      stream: 'text', // clients see the tokens live as `token` events labelled "text"
    });
    const text = answer.text.trim();
    partial('text', { text });
    progress(100, 'Written');
    return { topic: job.payload.topic, text };
  },
});
