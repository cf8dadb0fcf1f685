//! Job type `characters`: generates `count` characters for a `theme`.
//!
//! Result: a JSON array with one object per character, holding exactly the fields `name`,
//! `appearance`, `backstory`, `traits`, `skills` (text) and `stats` (the model's JSON object
//! when it returns valid JSON, else its text).
//!
//! Each character is written in six LLM steps, in that order, each prompt carrying the theme
//! and the character's earlier fields. All characters advance together: one `complete_all`
//! per step with one request per character, so a job makes `6 × count` calls in 6 rounds.
//! After each round the job reports "Generated backstories (3/3)"-style progress; when the
//! last round is done each character is emitted as a partial `character-{i}` (1-based).

use kiln_plugin::prelude::*;
use serde::{Deserialize, Serializer};

/// One generation step: the field it fills, its progress stage, what to ask, a token cap,
/// and whether the answer is a JSON object.
struct Step {
    field: &'static str,
    stage: &'static str,
    ask: &'static str,
    max_tokens: u32,
    json: bool,
}

const STEPS: [Step; 6] = [
    Step {
        field: "name",
        stage: "Generated names",
        ask: "the character's full name. Answer with the name only.",
        max_tokens: 24,
        json: false,
    },
    Step {
        field: "appearance",
        stage: "Generated appearances",
        ask: "the character's appearance, in two or three vivid sentences.",
        max_tokens: 160,
        json: false,
    },
    Step {
        field: "backstory",
        stage: "Generated backstories",
        ask: "the character's backstory, in one short paragraph consistent with the above.",
        max_tokens: 320,
        json: false,
    },
    Step {
        field: "traits",
        stage: "Generated traits",
        ask: "three to five personality traits, comma-separated, consistent with the above.",
        max_tokens: 80,
        json: false,
    },
    Step {
        field: "skills",
        stage: "Generated skills",
        ask: "three to five skills the character is known for, comma-separated.",
        max_tokens: 80,
        json: false,
    },
    Step {
        field: "stats",
        stage: "Generated stats",
        // The prompt shows the exact JSON shape: models follow an example better than a
        // description, and the offline provider answers in the shape it shows.
        ask: "game stats as one JSON object of exactly this shape, each value an integer \
              from 1 to 20 that fits the character: {\"strength\": 10, \"dexterity\": 10, \
              \"constitution\": 10, \"intelligence\": 10, \"wisdom\": 10, \"charisma\": 10}. \
              Output only the JSON object.",
        max_tokens: 120,
        json: true,
    },
];

/// The payload: a theme and how many characters to generate.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    theme: String,
    #[serde(default = "default_count")]
    count: usize,
}

fn default_count() -> usize {
    3
}

/// A character's fields, in generation order (serialised as a JSON object in that order).
#[derive(Default)]
struct Character(Vec<(&'static str, Value)>);

impl Serialize for Character {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

struct Characters;

impl JobType for Characters {
    type Payload = Payload;

    fn info() -> Info {
        Info::new("characters", env!("CARGO_PKG_VERSION"))
            .description(
                "Generates themed characters (name, appearance, backstory, traits, skills, \
                 stats), streaming each one as it is finished.",
            )
            .schema(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "characters payload",
                "type": "object",
                "required": ["theme"],
                "properties": {
                    "theme": {
                        "description": "What the characters should fit, e.g. \"cyberpunk heist crew\".",
                        "type": "string", "minLength": 1, "maxLength": 500, "pattern": "\\S"
                    },
                    "count": {
                        "description": "How many characters to generate.",
                        "type": "integer", "minimum": 1, "maximum": 10, "default": 3
                    }
                },
                "additionalProperties": false
            }))
            .timeout_secs(300)
    }

    fn run(job: Job<Payload>) -> Result<impl Serialize, JobError> {
        let Payload { theme, count } = job.payload;
        if !(1..=10).contains(&count) {
            return Err(JobError::invalid_input("count must be between 1 and 10"));
        }
        let mut characters: Vec<Character> = (0..count).map(|_| Character::default()).collect();
        let mut progress = Progress::new(count, STEPS.len());
        for (s, step) in STEPS.iter().enumerate() {
            if progress::cancelled() {
                return Err(JobError::permanent("cancelled"));
            }
            let requests = characters
                .iter()
                .enumerate()
                .map(|(i, character)| request(&theme, i + 1, count, step, character))
                .collect();
            let responses = llm::first_error(llm::complete_all(requests))?;
            for (character, response) in characters.iter_mut().zip(responses) {
                let value = if step.json {
                    response.json_or_text()
                } else {
                    Value::String(response.text.trim().to_string())
                };
                character.0.push((step.field, value));
            }
            if s + 1 == STEPS.len() {
                for (i, character) in characters.iter().enumerate() {
                    progress::partial(format!("character-{}", i + 1), character);
                }
            }
            progress.step_done(step.stage);
        }
        Ok(characters)
    }
}

/// The request for `step` of character `index` (1-based) of `count`.
fn request(theme: &str, index: usize, count: usize, step: &Step, character: &Character) -> Request {
    let mut prompt = format!("Theme: {theme}\n");
    if step.field == "name" {
        prompt += &format!(
            "This is character {index} of {count}; give it a name that no other character \
             of the set would share (vary origin, initials and length by number).\n"
        );
    }
    for (field, value) in &character.0 {
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        prompt += &format!("{field}: {text}\n");
    }
    prompt += &format!("\nWrite {}", step.ask);
    let request = Request::new()
        .system(
            "You create characters for stories and games. Stay consistent with the theme and \
             with the details already given. Reply with the requested content only.",
        )
        .user(prompt)
        .max_tokens(step.max_tokens)
        .temperature(0.9)
        .stream(format!("character-{index}/{}", step.field));
    if step.json { request.json() } else { request }
}

kiln_plugin::export!(Characters);
