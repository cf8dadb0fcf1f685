// @ts-check
/**
 * Job type `relics`: generates `count` relics (legendary objects) for a `theme`.
 *
 * Result: a JSON array with one object per relic, holding exactly the text fields `name`,
 * `description` and `history`.
 *
 * Each relic is written in three LLM steps, in that order, each prompt carrying the theme
 * and the relic's earlier fields. All relics advance together: one `completeAll` per step
 * with one request per relic, so a job makes `3 × count` calls in 3 rounds. After each
 * round the job reports "Generated descriptions (3/3)"-style progress; when the last round
 * is done each relic is emitted as a partial `relic-{i}` (1-based). The same shape as the
 * Rust job type `characters`, in JavaScript.
 */
import { InvalidInput, Permanent, Progress, cancelled, defineJobType, llm, partial } from 'kiln-plugin';

/** @typedef {{ theme: string, count?: number }} Payload */
/** @typedef {{ name?: string, description?: string, history?: string }} Relic */
/** @typedef {{ field: 'name' | 'description' | 'history', stage: string, ask: string, maxTokens: number }} Step */

/**
 * The generation steps: the field each fills, its progress stage, what to ask, a token cap.
 * @type {Step[]}
 */
const STEPS = [
  {
    field: 'name',
    stage: 'Generated names',
    ask: "the relic's name, as legends would call it. Answer with the name only.",
    maxTokens: 24,
  },
  {
    field: 'description',
    stage: 'Generated descriptions',
    ask: 'what the relic looks like and what it does, in two or three vivid sentences.',
    maxTokens: 160,
  },
  {
    field: 'history',
    stage: 'Generated histories',
    ask: "the relic's history: who made it, who carried it, how it was lost, in one short paragraph consistent with the above.",
    maxTokens: 320,
  },
];

const SYSTEM =
  'You create relics (legendary objects) for stories and games. Stay consistent with the theme and ' +
  'with the details already given. Reply with the requested content only.';

/**
 * The request for `step` of relic `index` (1-based) of `count`.
 * @param {string} theme @param {number} index @param {number} count @param {Step} step @param {Relic} relic
 */
function request(theme, index, count, step, relic) {
  let prompt = `Theme: ${theme}\n`;
  if (step.field === 'name') {
    prompt +=
      `This is relic ${index} of ${count}; give it a name that no other relic of the set would share ` +
      '(vary origin, material and length by number).\n';
  }
  for (const [field, text] of Object.entries(relic)) {
    prompt += `${field}: ${text}\n`;
  }
  prompt += `\nWrite ${step.ask}`;
  return {
    system: SYSTEM,
    user: prompt,
    maxTokens: step.maxTokens,
    temperature: 0.9,
    stream: `relic-${index}/${step.field}`,
  };
}

export default defineJobType({
  name: 'relics',
  version: '0.1.0',
  description: 'Generates themed relics (name, description, history), streaming each one as it is finished.',
  payloadSchema: {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title: 'relics payload',
    type: 'object',
    required: ['theme'],
    properties: {
      theme: {
        description: 'What the relics should fit, e.g. "drowned elven kingdom".',
        type: 'string',
        minLength: 1,
        maxLength: 500,
        pattern: '\\S',
      },
      count: {
        description: 'How many relics to generate.',
        type: 'integer',
        minimum: 1,
        maximum: 10,
        default: 3,
      },
    },
    additionalProperties: false,
  },
  timeoutSecs: 300,

  /** @param {import('kiln-plugin').Job<Payload>} job */
  async run(job) {
    const { theme, count = 3 } = job.payload;
    if (!Number.isInteger(count) || count < 1 || count > 10) {
      throw new InvalidInput('count must be between 1 and 10');
    }
    /** @type {Relic[]} */
    const relics = Array.from({ length: count }, () => ({}));
    const tracker = new Progress(count, STEPS.length);
    for (const [s, step] of STEPS.entries()) {
      if (cancelled()) throw new Permanent('cancelled');
      const answers = await llm.completeAll(relics.map((relic, i) => request(theme, i + 1, count, step, relic)));
      answers.forEach((answer, i) => {
        relics[i][step.field] = answer.text.trim();
      });
      if (s + 1 === STEPS.length) {
        relics.forEach((relic, i) => partial(`relic-${i + 1}`, relic));
      }
      tracker.stepDone(step.stage);
    }
    return relics;
  },
});
