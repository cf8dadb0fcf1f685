//! Structured output and tool calls, checked before the plugin sees them.
//!
//! A request with a JSON Schema is sent in the provider's native structured-output mode,
//! but models and compatible servers still get it wrong now and then, so the answer is
//! validated here whatever the provider promised. A non-conforming answer (or a tool call
//! with arguments that are not a JSON object, or naming a tool the request did not
//! declare) is asked for once more, with the validation error quoted to the model; a
//! second miss fails the call with `rejected` and that error. The tokens of both tries
//! are charged to the call, so a job's `usage` counts what was paid.

use serde_json::Value;

use super::{LlmClient, LlmError, LlmRequest, LlmResponse, Message, Role, TokenSink};

/// Tries a request gets when its answer does not conform: the first, and one more.
pub const STRUCTURED_TRIES: u32 = 2;

/// Checks a request's schema and tools before anything is sent, so a broken schema is the
/// plugin's `rejected` error rather than a provider's 400.
pub fn check_request(request: &LlmRequest) -> Result<(), LlmError> {
    if let Some(spec) = &request.json_schema {
        check_name("schema", &spec.name)?;
        jsonschema::validator_for(&spec.schema).map_err(|e| {
            LlmError::Rejected(format!(
                "the request's JSON Schema '{}' is invalid: {e}",
                spec.name
            ))
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    for tool in &request.tools {
        check_name("tool", &tool.name)?;
        if !seen.insert(tool.name.as_str()) {
            return Err(LlmError::Rejected(format!(
                "the request declares the tool '{}' twice",
                tool.name
            )));
        }
        if !tool.parameters.is_object() {
            return Err(LlmError::Rejected(format!(
                "the parameters of tool '{}' are not a JSON Schema object",
                tool.name
            )));
        }
        jsonschema::validator_for(&tool.parameters).map_err(|e| {
            LlmError::Rejected(format!(
                "the parameter schema of tool '{}' is invalid: {e}",
                tool.name
            ))
        })?;
    }
    Ok(())
}

/// Names of tools and schemas: what both wire formats accept.
fn check_name(what: &str, name: &str) -> Result<(), LlmError> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fine {
        Ok(())
    } else {
        Err(LlmError::Rejected(format!(
            "the {what} name {name:?} must be 1 to 64 letters, digits, '_' or '-'"
        )))
    }
}

/// Why `response` does not answer `request` as it must, if it does not.
pub fn check_answer(request: &LlmRequest, response: &LlmResponse) -> Result<(), String> {
    for call in &response.tool_calls {
        if !request.tools.iter().any(|t| t.name == call.name) {
            return Err(format!(
                "the model called the tool '{}', which the request does not declare",
                call.name
            ));
        }
        match serde_json::from_str::<Value>(&call.arguments) {
            Ok(Value::Object(_)) => {}
            _ => {
                return Err(format!(
                    "the arguments of the model's call to '{}' are not a JSON object",
                    call.name
                ));
            }
        }
    }
    let Some(spec) = &request.json_schema else {
        return Ok(());
    };
    if response.text.is_empty() && !response.tool_calls.is_empty() {
        // A tool round: the structured answer comes after the results.
        return Ok(());
    }
    let value: Value = serde_json::from_str(response.text.trim())
        .map_err(|e| format!("the answer is not JSON ({e})"))?;
    let validator = jsonschema::validator_for(&spec.schema)
        .map_err(|e| format!("the schema is invalid: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "/" } else { &path })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the answer does not match the schema '{}': {}",
            spec.name,
            errors.join("; ")
        ))
    }
}

/// Runs `request` on `client` and checks the answer, asking once more when it does not
/// conform. `on_retry` is called before the second try (to withdraw streamed tokens).
pub async fn complete_checked(
    client: &dyn LlmClient,
    caller: &str,
    request: &LlmRequest,
    tokens: Option<TokenSink<'_>>,
    on_retry: &(dyn Fn() + Send + Sync),
) -> Result<LlmResponse, LlmError> {
    check_request(request)?;
    let first = client.complete(caller, request, tokens).await?;
    let Err(why) = check_answer(request, &first) else {
        return Ok(first);
    };
    tracing::debug!(%why, "the answer did not conform; asking once more");
    on_retry();
    let mut again = request.clone();
    again.messages.push(Message {
        tool_calls: first.tool_calls.clone(),
        ..Message::new(Role::Assistant, first.text.clone())
    });
    for call in &first.tool_calls {
        again.messages.push(Message {
            tool_call_id: Some(call.id.clone()),
            ..Message::new(Role::Tool, format!("not run: {why}"))
        });
    }
    again.messages.push(Message::new(
        Role::User,
        format!("{why}. Answer again, following the required format exactly."),
    ));
    let mut second = client.complete(caller, &again, tokens).await?;
    // Both tries were paid for.
    second.input_tokens = second.input_tokens.saturating_add(first.input_tokens);
    second.output_tokens = second.output_tokens.saturating_add(first.output_tokens);
    second.cached_input_tokens = second
        .cached_input_tokens
        .saturating_add(first.cached_input_tokens);
    second.reasoning_tokens = second
        .reasoning_tokens
        .saturating_add(first.reasoning_tokens);
    match check_answer(request, &second) {
        Ok(()) => Ok(second),
        Err(why) => Err(LlmError::Rejected(format!(
            "{why} (asked {STRUCTURED_TRIES} times)"
        ))),
    }
}
