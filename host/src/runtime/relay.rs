//! A guest's LLM calls, carried out on its job's own task.
//!
//! Guests run on the guest threads (see `guests`), but an LLM call is socket I/O, timers
//! and the provider's admission control: it belongs on the executor that serves HTTP, where
//! a CPU-bound guest cannot delay it. The guest side of the relay is an [`LlmClient`] that
//! sends each request over a channel; the job's task, waiting for its guest on that
//! executor, serves the channel with the real client and sends back the streamed tokens
//! and the answer.

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use crate::llm::{
    EmbedRequest, EmbedResponse, LlmClient, LlmError, LlmRequest, LlmResponse, TokenSink,
};

/// A call on its way from the guest to the job's task.
struct Call {
    /// Who made the guest's call (its job), for the provider's fairness between jobs.
    caller: String,
    work: Work,
}

/// What a call asks for.
enum Work {
    Complete {
        request: LlmRequest,
        /// Where streamed text goes, when the guest asked for it.
        tokens: Option<mpsc::UnboundedSender<String>>,
        answer: oneshot::Sender<Result<LlmResponse, LlmError>>,
    },
    Embed {
        request: EmbedRequest,
        answer: oneshot::Sender<Result<EmbedResponse, LlmError>>,
    },
}

fn gone() -> LlmError {
    LlmError::Unavailable("the host stopped serving this job".into())
}

/// The guest's side: an LLM client that hands every call to the job's task.
struct GuestSide {
    calls: mpsc::UnboundedSender<Call>,
}

/// Splits `client` into the client a guest calls and the future that answers those calls.
/// Poll the future on the job's task while the guest runs; it ends once the guest's client
/// is dropped (with the guest's store), dropping calls nobody waits for any more.
pub(crate) fn relay(client: Arc<dyn LlmClient>) -> (Arc<dyn LlmClient>, impl Future<Output = ()>) {
    let (calls, incoming) = mpsc::unbounded_channel();
    (Arc::new(GuestSide { calls }), serve(client, incoming))
}

impl LlmClient for GuestSide {
    fn complete<'a>(
        &'a self,
        caller: &'a str,
        request: &'a LlmRequest,
        tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>> {
        async move {
            let (token_tx, mut token_rx) = mpsc::unbounded_channel();
            let (answer, answered) = oneshot::channel();
            let call = Call {
                caller: caller.to_string(),
                work: Work::Complete {
                    request: request.clone(),
                    tokens: tokens.is_some().then_some(token_tx),
                    answer,
                },
            };
            self.calls.send(call).map_err(|_| gone())?;
            if let Some(sink) = tokens {
                // Ends when the call is over and its sender dropped.
                while let Some(delta) = token_rx.recv().await {
                    sink(&delta);
                }
            }
            answered.await.unwrap_or_else(|_| Err(gone()))
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        caller: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, LlmError>> {
        async move {
            let (answer, answered) = oneshot::channel();
            let call = Call {
                caller: caller.to_string(),
                work: Work::Embed {
                    request: request.clone(),
                    answer,
                },
            };
            self.calls.send(call).map_err(|_| gone())?;
            answered.await.unwrap_or_else(|_| Err(gone()))
        }
        .boxed()
    }
}

/// Answers calls concurrently until the guest's client is dropped.
async fn serve(client: Arc<dyn LlmClient>, mut incoming: mpsc::UnboundedReceiver<Call>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            call = incoming.recv() => match call {
                Some(call) => running.push(answer(client.clone(), call)),
                None => return,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

async fn answer(client: Arc<dyn LlmClient>, call: Call) {
    let Call { caller, work } = call;
    match work {
        Work::Complete {
            request,
            tokens,
            mut answer,
        } => {
            let forward = |delta: &str| {
                if let Some(tokens) = &tokens {
                    let _ = tokens.send(delta.to_string());
                }
            };
            let sink = tokens.as_ref().map(|_| &forward as TokenSink<'_>);
            tokio::select! {
                outcome = client.complete(&caller, &request, sink) => {
                    let _ = answer.send(outcome);
                }
                // The guest stopped waiting (it was cancelled or timed out): stop the
                // request too.
                () = answer.closed() => {}
            }
        }
        Work::Embed {
            request,
            mut answer,
        } => {
            tokio::select! {
                outcome = client.embed(&caller, &request) => {
                    let _ = answer.send(outcome);
                }
                () = answer.closed() => {}
            }
        }
    }
}
