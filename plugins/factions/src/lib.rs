//! Job type `factions`: generates `count` factions (groups, guilds, houses) for a `theme`.
//!
//! Result: a JSON array with one object per faction, holding exactly the text fields `name`,
//! `ideology`, `appearance` and `summary`.
//!
//! Each faction is written in four LLM steps, in that order, each prompt carrying the theme
//! and the faction's earlier fields. All factions advance together: one `complete_all` per
//! step with one request per faction, so a job makes `4 × count` calls in 4 rounds. After
//! each round the job reports "Generated ideologies (2/2)"-style progress; when the last
//! round is done each faction is emitted as a partial `faction-{i}` (1-based).

use kiln_plugin::prelude::*;
use serde::{Deserialize, Serializer};

/// One generation step: the field it fills, its progress stage, what to ask, and a token cap.
struct Step {
    field: &'static str,
    stage: &'static str,
    ask: &'static str,
    max_tokens: u32,
}

const STEPS: [Step; 4] = [
    Step {
        field: "name",
        stage: "Generated names",
        ask: "the faction's name. Answer with the name only.",
        max_tokens: 24,
    },
    Step {
        field: "ideology",
        stage: "Generated ideologies",
        ask: "the faction's ideology: what it believes, wants and opposes, in two or three \
              sentences.",
        max_tokens: 200,
    },
    Step {
        field: "appearance",
        stage: "Generated appearances",
        ask: "how the faction and its members look: colours, symbols, dress, strongholds, in \
              two or three sentences.",
        max_tokens: 200,
    },
    Step {
        field: "summary",
        stage: "Generated summaries",
        ask: "a one-paragraph summary of the faction for a game master: its role in the \
              world, its leaders and its methods, consistent with the above.",
        max_tokens: 320,
    },
];

/// The payload: a theme and how many factions to generate.
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

/// A faction's fields, in generation order (serialised as a JSON object in that order).
#[derive(Default)]
struct Faction(Vec<(&'static str, String)>);

impl Serialize for Faction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

struct Factions;

impl JobType for Factions {
    type Payload = Payload;

    fn info() -> Info {
        Info::new("factions", env!("CARGO_PKG_VERSION"))
            .description(
                "Generates themed factions (name, ideology, appearance, summary), streaming \
                 each one as it is finished.",
            )
            .schema(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "factions payload",
                "type": "object",
                "required": ["theme"],
                "properties": {
                    "theme": {
                        "description": "What the factions should fit, e.g. \"a drowned archipelago\".",
                        "type": "string", "minLength": 1, "maxLength": 500, "pattern": "\\S"
                    },
                    "count": {
                        "description": "How many factions to generate.",
                        "type": "integer", "minimum": 1, "maximum": 10, "default": 3
                    }
                },
                "additionalProperties": false
            }))
            .timeout_secs(240)
    }

    fn run(job: Job<Payload>) -> Result<impl Serialize, JobError> {
        let Payload { theme, count } = job.payload;
        if !(1..=10).contains(&count) {
            return Err(JobError::invalid_input("count must be between 1 and 10"));
        }
        let mut factions: Vec<Faction> = (0..count).map(|_| Faction::default()).collect();
        let mut progress = Progress::new(count, STEPS.len());
        for (s, step) in STEPS.iter().enumerate() {
            if progress::cancelled() {
                return Err(JobError::permanent("cancelled"));
            }
            let requests = factions
                .iter()
                .enumerate()
                .map(|(i, faction)| request(&theme, i + 1, count, step, faction))
                .collect();
            let responses = llm::first_error(llm::complete_all(requests))?;
            for (faction, response) in factions.iter_mut().zip(responses) {
                faction
                    .0
                    .push((step.field, response.text.trim().to_string()));
            }
            if s + 1 == STEPS.len() {
                for (i, faction) in factions.iter().enumerate() {
                    progress::partial(format!("faction-{}", i + 1), faction);
                }
            }
            progress.step_done(step.stage);
        }
        Ok(factions)
    }
}

/// The request for `step` of faction `index` (1-based) of `count`.
fn request(theme: &str, index: usize, count: usize, step: &Step, faction: &Faction) -> Request {
    let mut prompt = format!("Theme: {theme}\n");
    if step.field == "name" {
        prompt += &format!(
            "This is faction {index} of {count}; give it a name that no other faction of the \
             set would share (vary origin, initials and length by number).\n"
        );
    }
    for (field, text) in &faction.0 {
        prompt += &format!("{field}: {text}\n");
    }
    prompt += &format!("\nWrite {}", step.ask);
    Request::new()
        .system(
            "You create factions for stories and games. Stay consistent with the theme and \
             with the details already given. Reply with the requested content only.",
        )
        .user(prompt)
        .max_tokens(step.max_tokens)
        .temperature(0.9)
        .stream(format!("faction-{index}/{}", step.field))
}

kiln_plugin::export!(Factions);
