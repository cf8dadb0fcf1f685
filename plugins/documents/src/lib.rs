//! Job type `documents`: summarises a long text (up to several MB) by map-reduce.
//!
//! Input: `{"text": …}`, or `{"file": "<id>"}` naming an upload (`POST /v1/files`) of plain
//! text, Markdown, HTML, PDF or DOCX, whose text is extracted inside the sandbox (see
//! [`extract`]); a broken, hostile or oversized file fails only its job, `invalid_input`.
//!
//! Result: `{"summary": string, "key_points": [string], "sections": [{"title", "summary"}]}`,
//! and the same as a Markdown artifact, `summary.md`.
//!
//! 1. **Split** the text with [`kiln_plugin::text::split_chunks`] into chunks of about
//!    6000 bytes, on paragraph, then sentence, then word boundaries.
//! 2. **Map**: summarise every chunk, all in one `complete_all`; each summary is emitted as
//!    a partial `chunk-{i}` (1-based) and counted in progress ("Summarised chunks (4/12)").
//! 3. **Reduce**: combine the summaries in groups of at most 8 per request, round after
//!    round, until at most 8 remain; a last call turns those into the JSON result. If that
//!    JSON does not parse or lacks a key, the key is rebuilt from the text: `summary` is the
//!    model's text, `key_points` the first sentence of each chunk summary, and `sections`
//!    one "Part N" per chunk summary.
//!
//! **LLM call budget.** The host caps LLM calls per job (about 200 by default). Chunks are
//! therefore capped at [`MAX_CHUNKS`] = 150: for longer texts the chunk size grows (a 5 MB
//! text gets chunks of roughly 35-40 KB). The worst case is 150 map calls + 19 + 3 reduce
//! calls + 1 final call = 173 calls.

use std::borrow::Cow;

use kiln_plugin::prelude::*;
use kiln_plugin::progress::stage_message;
use serde::Deserialize;

mod extract;

use extract::{ExtractLimits, Format};

/// Preferred chunk size in bytes (about 1500 tokens of English).
const CHUNK_BYTES: usize = 6000;
/// Most chunks a text is split into; keeps the job under the host's LLM call limit.
pub const MAX_CHUNKS: usize = 150;
/// Most summaries combined by one reduce request.
const GROUP: usize = 8;

/// The payload: the text (or the file holding it), and optionally its title and what the
/// reader cares about.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    text: Option<String>,
    file: Option<String>,
    title: Option<String>,
    instructions: Option<String>,
}

/// The text of the payload: as given, or extracted from its file.
fn document_text(payload: &Payload) -> Result<Cow<'_, str>, JobError> {
    if let Some(text) = &payload.text {
        return Ok(Cow::Borrowed(text));
    }
    let Some(id) = &payload.file else {
        return Err(JobError::invalid_input(
            "the payload needs `text` or `file`",
        ));
    };
    let limits = ExtractLimits::default();
    let info = files::stat(id)?;
    let bytes =
        files::read_all(id, limits.max_input_bytes as u64).map_err(|error| match error {
            files::FileError::TooLarge(_) => JobError::invalid_input(format!(
                "the file is {} bytes; documents reads files of at most {} MiB",
                info.size,
                limits.max_input_bytes / (1024 * 1024)
            )),
            other => other.into(),
        })?;
    let head = &bytes[..bytes.len().min(1024)];
    let format = Format::detect(&info.content_type, head).ok_or_else(|| {
        JobError::invalid_input(format!(
            "the file's type ({}) is not one documents reads: plain text, Markdown, HTML, \
             PDF or DOCX",
            info.content_type
        ))
    })?;
    progress::report(2, "Reading the file");
    let text = extract::extract_text(&bytes, format, &limits)
        .map_err(|error| JobError::invalid_input(error.to_string()))?;
    log::info(format!(
        "extracted {} bytes of text from a {} byte {:?} file",
        text.len(),
        bytes.len(),
        format
    ));
    Ok(Cow::Owned(text))
}

/// The summary as Markdown, for the `summary.md` artifact.
fn markdown(title: Option<&str>, summary: &Summary) -> String {
    let mut out = format!(
        "# {}\n\n{}\n",
        title.unwrap_or("Summary"),
        summary.summary.trim()
    );
    if !summary.key_points.is_empty() {
        out.push_str("\n## Key points\n\n");
        for point in &summary.key_points {
            out.push_str(&format!("- {}\n", point.trim()));
        }
    }
    for section in &summary.sections {
        out.push_str(&format!(
            "\n## {}\n\n{}\n",
            section.title.trim(),
            section.summary.trim()
        ));
    }
    out
}

/// The job's result.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Summary {
    summary: String,
    key_points: Vec<String>,
    sections: Vec<Section>,
}

/// One section of the result.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Section {
    title: String,
    summary: String,
}

struct Documents;

impl JobType for Documents {
    type Payload = Payload;

    fn info() -> Info {
        Info::new("documents", env!("CARGO_PKG_VERSION"))
            .description(
                "Summarises a long text: a summary, key points and per-section summaries, \
                 streaming each chunk's summary as it is done.",
            )
            .schema(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "documents payload",
                "type": "object",
                "oneOf": [{"required": ["text"]}, {"required": ["file"]}],
                "properties": {
                    "text": {
                        "description": "The text to summarise (plain text or Markdown; several MB is fine).",
                        "type": "string", "minLength": 1, "pattern": "\\S"
                    },
                    "file": {
                        "description": "Or: the id of an uploaded file (POST /v1/files) of plain text, Markdown, HTML, PDF or DOCX, up to 16 MiB.",
                        "type": "string", "format": "kiln-file"
                    },
                    "title": {
                        "description": "The document's title, given to the model as context.",
                        "type": "string", "maxLength": 500
                    },
                    "instructions": {
                        "description": "What the summary should focus on, e.g. \"risks and deadlines\".",
                        "type": "string", "maxLength": 4000
                    }
                },
                "additionalProperties": false
            }))
            .timeout_secs(600)
    }

    fn run(job: Job<Payload>) -> Result<impl Serialize, JobError> {
        let payload = job.payload;
        let context = context(&payload);
        let text = document_text(&payload)?;
        let chunks = chunk(&text);
        if chunks.is_empty() {
            return Err(JobError::invalid_input("the document has no text"));
        }
        let n = chunks.len();
        log::info(format!("{} bytes in {n} chunks", text.len()));
        let mut progress = Progress::new(n + reduce_calls(n), 1);

        // Map: one summary per chunk, all at once.
        let requests = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| summarise_chunk(&context, i + 1, n, chunk))
            .collect();
        let responses = llm::first_error(llm::complete_all(requests))?;
        let chunk_summaries: Vec<String> = responses
            .into_iter()
            .map(|r| r.text.trim().to_string())
            .collect();
        for (i, summary) in chunk_summaries.iter().enumerate() {
            progress::partial(
                format!("chunk-{}", i + 1),
                &json!({ "part": i + 1, "summary": summary }),
            );
            progress.advance(1, stage_message("Summarised chunks", i + 1, n));
        }

        // Reduce: groups of at most GROUP, until one request can take them all.
        let mut summaries = chunk_summaries.clone();
        let mut round = 0;
        while summaries.len() > GROUP {
            if progress::cancelled() {
                return Err(JobError::permanent("cancelled"));
            }
            round += 1;
            let requests: Vec<Request> = summaries
                .chunks(GROUP)
                .map(|group| combine(&context, group))
                .collect();
            let groups = requests.len();
            let responses = llm::first_error(llm::complete_all(requests))?;
            summaries = responses
                .into_iter()
                .map(|r| r.text.trim().to_string())
                .collect();
            progress.advance(
                groups as u64,
                format!("Combined summaries, round {round} ({groups} groups)"),
            );
        }

        if progress::cancelled() {
            return Err(JobError::permanent("cancelled"));
        }
        let response = llm::complete(final_request(&context, &summaries))?;
        let result = final_result(&response.text, &chunk_summaries);
        artifacts::write(
            "summary.md",
            "text/markdown",
            markdown(payload.title.as_deref(), &result).as_bytes(),
        )?;
        progress.advance(1, "Wrote the final summary");
        Ok(result)
    }
}

/// Splits `text` into at most [`MAX_CHUNKS`] chunks of about [`CHUNK_BYTES`], growing the
/// chunk size for very long texts.
fn chunk(text: &str) -> Vec<&str> {
    let mut size = CHUNK_BYTES.max(text.len().div_ceil(MAX_CHUNKS));
    loop {
        let chunks = text::split_chunks(text, size);
        if chunks.len() <= MAX_CHUNKS {
            return chunks;
        }
        size += size / 4;
    }
}

/// Reduce calls needed for `n` chunk summaries: the grouping rounds plus the final call.
fn reduce_calls(mut n: usize) -> usize {
    let mut calls = 1;
    while n > GROUP {
        n = n.div_ceil(GROUP);
        calls += n;
    }
    calls
}

/// The title and instructions, as a preamble for every prompt.
fn context(payload: &Payload) -> String {
    let mut context = String::new();
    if let Some(title) = payload.title.as_deref().filter(|t| !t.trim().is_empty()) {
        context += &format!("Document title: {title}\n");
    }
    if let Some(focus) = payload
        .instructions
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        context += &format!("The reader's instructions: {focus}\n");
    }
    context
}

const SYSTEM: &str = "You summarise documents faithfully and concisely. Keep names, figures, \
                      dates and conclusions; never invent facts.";

fn summarise_chunk(context: &str, index: usize, count: usize, chunk: &str) -> Request {
    Request::new()
        .system(SYSTEM)
        .user(format!(
            "{context}This is part {index} of {count} of the document. Summarise it in one \
             paragraph of at most 120 words.\n\n---\n{chunk}"
        ))
        .max_tokens(300)
        .temperature(0.2)
}

fn combine(context: &str, group: &[String]) -> Request {
    Request::new()
        .system(SYSTEM)
        .user(format!(
            "{context}These are summaries of consecutive parts of one document. Combine them \
             into one paragraph of at most 200 words, in order.\n\n---\n{}",
            group.join("\n\n")
        ))
        .max_tokens(450)
        .temperature(0.2)
}

fn final_request(context: &str, summaries: &[String]) -> Request {
    Request::new()
        .system(SYSTEM)
        .user(format!(
            "{context}These are summaries of consecutive parts of one document. Reply with a \
             JSON object with exactly these keys: \"summary\" (a string of at most 250 words \
             about the whole document), \"key_points\" (an array of 3 to 10 short strings) \
             and \"sections\" (an array of objects with \"title\" and \"summary\", one per \
             major part, in order). Its shape: {{\"summary\": \"what the whole document \
             says, in at most 250 words\", \"key_points\": [\"a short point\", \"another \
             short point\", \"a third short point\"], \"sections\": [{{\"title\": \"the \
             part's title\", \"summary\": \"what this part says\"}}]}}\n\n---\n{}",
            summaries.join("\n\n")
        ))
        .max_tokens(1500)
        .temperature(0.2)
        .json()
        .stream("summary")
}

/// The result from the final answer `text`, rebuilding any missing or malformed key from
/// the text and the chunk summaries.
fn final_result(text: &str, chunk_summaries: &[String]) -> Summary {
    let parsed = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => Default::default(),
    };
    let string = |key: &str| parsed.get(key).and_then(Value::as_str).map(str::trim);
    let summary = string("summary")
        .or_else(|| string("text"))
        .filter(|s| !s.is_empty())
        .unwrap_or(text.trim())
        .to_string();
    let key_points = parsed
        .get("key_points")
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .filter(|points| !points.is_empty())
        .unwrap_or_else(|| {
            chunk_summaries
                .iter()
                .map(|s| first_sentence(s).to_string())
                .collect()
        });
    let sections = parsed
        .get("sections")
        .and_then(|v| serde_json::from_value::<Vec<Section>>(v.clone()).ok())
        .filter(|sections| !sections.is_empty())
        .unwrap_or_else(|| {
            let parts = chunk_summaries.iter().enumerate();
            parts
                .map(|(i, s)| Section {
                    title: format!("Part {}", i + 1),
                    summary: s.clone(),
                })
                .collect()
        });
    Summary {
        summary,
        key_points,
        sections,
    }
}

/// The first sentence of `text` (up to and including `.`, `!` or `?` before whitespace),
/// or all of it.
fn first_sentence(text: &str) -> &str {
    let text = text.trim();
    let bytes = text.as_bytes();
    (1..bytes.len())
        .find(|&j| bytes[j].is_ascii_whitespace() && matches!(bytes[j - 1], b'.' | b'!' | b'?'))
        .map_or(text, |j| &text[..j])
}

kiln_plugin::export!(Documents);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_megabytes_stay_under_the_call_limit() {
        let paragraph = "A sentence about the harbour. Another about the fleet!\n\n".repeat(2);
        let text = paragraph.repeat(5_000_000 / paragraph.len() + 1);
        let chunks = chunk(&text);
        assert!(chunks.len() <= MAX_CHUNKS, "{}", chunks.len());
        assert!(chunks.len() + reduce_calls(chunks.len()) < 200);
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn short_texts_use_small_chunks() {
        let text = "word ".repeat(5000); // 25 KB
        let chunks = chunk(&text);
        assert!(chunks.len() >= 5, "{}", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
    }

    #[test]
    fn reduce_call_counts() {
        assert_eq!(reduce_calls(1), 1);
        assert_eq!(reduce_calls(8), 1);
        assert_eq!(reduce_calls(9), 3);
        assert_eq!(reduce_calls(150), 19 + 3 + 1);
    }

    #[test]
    fn well_formed_json_is_kept() {
        let text = r#"{"summary": "S", "key_points": ["a"], "sections": [{"title": "T", "summary": "x"}]}"#;
        let result = final_result(text, &["one.".into()]);
        assert_eq!(result.summary, "S");
        assert_eq!(result.key_points, ["a"]);
        assert_eq!(
            result.sections,
            [Section {
                title: "T".into(),
                summary: "x".into()
            }]
        );
    }

    #[test]
    fn missing_keys_are_rebuilt_from_the_text() {
        let chunks = vec!["First one. More.".to_string(), "Second! Rest".to_string()];
        let result = final_result("not json at all", &chunks);
        assert_eq!(result.summary, "not json at all");
        assert_eq!(result.key_points, ["First one.", "Second!"]);
        assert_eq!(result.sections.len(), 2);
        assert_eq!(result.sections[1].title, "Part 2");
        assert_eq!(result.sections[1].summary, "Second! Rest");

        let result = final_result(r#"{"synthetic": true, "text": "hello"}"#, &chunks);
        assert_eq!(result.summary, "hello");
        assert_eq!(result.key_points.len(), 2);
    }

    #[test]
    fn a_file_is_extracted_summarised_and_kept_as_markdown() {
        let html = b"<html><body><h1>Report</h1><p>The harbour flooded twice.</p>\
                     <script>secret()</script></body></html>";
        let run = kiln_plugin::testing::Harness::new(json!({"file": "f1", "title": "Harbour"}))
            .file("f1", "text/html", html)
            .answer(|request| {
                Ok(Response::text(if request.is_json() {
                    r#"{"summary": "Floods.", "key_points": ["Two floods"], "sections": []}"#
                } else {
                    "The harbour flooded."
                }))
            })
            .run::<Documents>();
        let result = run.result.expect("completed");
        assert_eq!(result["summary"], "Floods.");
        let map = run.requests[0].last_user_message().unwrap();
        assert!(map.contains("The harbour flooded twice."), "{map}");
        assert!(!map.contains("secret"), "scripts are not text: {map}");
        let (name, content_type, bytes) = &run.artifacts[0];
        assert_eq!(
            (name.as_str(), content_type.as_str()),
            ("summary.md", "text/markdown")
        );
        let markdown = String::from_utf8(bytes.clone()).unwrap();
        assert!(markdown.starts_with("# Harbour\n\nFloods."), "{markdown}");
        assert!(markdown.contains("- Two floods"), "{markdown}");
    }

    #[test]
    fn a_broken_file_is_invalid_input() {
        let run = kiln_plugin::testing::Harness::new(json!({"file": "f1"}))
            .file("f1", "application/pdf", b"%PDF-1.7 this is not a PDF")
            .run::<Documents>();
        match run.result {
            Err(JobError::InvalidInput(message)) => {
                assert!(message.contains("invalid document"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(run.requests.is_empty(), "nothing was paid for");
    }
}
