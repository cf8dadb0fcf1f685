//! `greet`: writes one greeting per name. A Kiln job type to copy.
use kiln_plugin::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Payload {
    names: Vec<String>,
}

struct Greet;

impl JobType for Greet {
    type Payload = Payload;

    fn info() -> Info {
        Info::new("greet", env!("CARGO_PKG_VERSION"))
            .description("Writes a short greeting for each name.")
            .schema(json!({
                "type": "object",
                "required": ["names"],
                "properties": {
                    "names": {"type": "array", "items": {"type": "string", "minLength": 1},
                              "minItems": 1, "maxItems": 20}
                },
                "additionalProperties": false
            }))
            .timeout_secs(120)
    }

    fn run(job: Job<Payload>) -> Result<impl Serialize, JobError> {
        let names = job.payload.names;
        let requests = names.iter().enumerate().map(|(i, name)| {
            Request::new()
                .system("You write one warm sentence.")
                .user(format!("Greet {name}."))
                .max_tokens(60)
                .stream(format!("greeting-{}", i + 1))
        });
        let mut greetings = Vec::new();
        for (i, response) in llm::complete_all(requests.collect())
            .into_iter()
            .enumerate()
        {
            let text = response?.text; // an LLM error becomes retryable or permanent
            progress::partial(format!("greeting-{}", i + 1), &text);
            greetings.push(text);
        }
        progress::report(
            100,
            progress::stage_message("Greeted", names.len(), names.len()),
        );
        Ok(json!({ "greetings": greetings }))
    }
}

kiln_plugin::export!(Greet);
