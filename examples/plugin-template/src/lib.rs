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
        progress::report(10, "Writing greetings");
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

// `cargo test` runs these natively; `kiln_plugin::testing` answers the LLM calls.
#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::testing;

    #[test]
    fn greets_every_name_and_streams_each_greeting() {
        let run = testing::run::<Greet>(json!({ "names": ["Ada", "Linus"] }), |request| {
            format!(
                "Hello from {}",
                request.last_user_message().unwrap_or_default()
            )
        });
        let result = run.result.expect("the job succeeds");
        assert_eq!(result["greetings"][1], "Hello from Greet Linus.");
        assert_eq!(run.partials.len(), 2);
        assert_eq!(run.requests[0].stream_label(), Some("greeting-1"));
        assert_eq!(run.progress.last().map(|(percent, _)| *percent), Some(100));
    }
}
