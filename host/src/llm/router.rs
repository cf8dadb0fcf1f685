//! Routes a request's model alias to a configured provider: the `[models]` table maps
//! aliases to `"provider/model"`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{LlmClient, LlmError, LlmRequest, LlmResponse, TokenSink};

/// One alias's target.
#[derive(Clone)]
struct Route {
    provider: Arc<dyn LlmClient>,
    model: String,
}

/// An [`LlmClient`] that resolves aliases and forwards to providers.
#[derive(Clone, Default)]
pub struct ModelRouter {
    routes: HashMap<String, Route>,
}

impl ModelRouter {
    /// Routes `alias` to `model` on `provider`.
    pub fn route(&mut self, alias: &str, provider: Arc<dyn LlmClient>, model: &str) {
        self.routes.insert(
            alias.to_string(),
            Route {
                provider,
                model: model.to_string(),
            },
        );
    }

    /// The configured aliases.
    pub fn aliases(&self) -> Vec<String> {
        let mut aliases: Vec<String> = self.routes.keys().cloned().collect();
        aliases.sort();
        aliases
    }
}

impl LlmClient for ModelRouter {
    fn complete<'a>(
        &'a self,
        request: &'a LlmRequest,
        tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>> {
        let alias = request.model.as_deref().unwrap_or("default");
        let Some(route) = self.routes.get(alias) else {
            let known = self.aliases().join(", ");
            let message = format!("model alias '{alias}' is not configured (known: {known})");
            return async move { Err(LlmError::Rejected(message)) }.boxed();
        };
        async move {
            // The provider sees the concrete model name, never the alias.
            let mut concrete = request.clone();
            concrete.model = Some(route.model.clone());
            route.provider.complete(&concrete, tokens).await
        }
        .boxed()
    }
}
