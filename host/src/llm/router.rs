//! Routes a request's model alias to a configured provider: the `[models]` table maps
//! aliases to `"provider/model"`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{EmbedRequest, EmbedResponse, LlmClient, LlmError, LlmRequest, LlmResponse, TokenSink};

/// One alias's target.
#[derive(Clone)]
struct Route {
    provider: Arc<dyn LlmClient>,
    model: String,
}

/// A configured provider by its name in the config, for `kiln doctor`.
#[derive(Clone)]
pub struct NamedProvider {
    /// The name of its `[providers.NAME]` table.
    pub name: String,
    /// `openai`, `anthropic` or `offline`.
    pub kind: String,
    /// The provider itself.
    pub client: Arc<dyn LlmClient>,
}

/// An [`LlmClient`] that resolves aliases and forwards to providers.
#[derive(Clone, Default)]
pub struct ModelRouter {
    routes: HashMap<String, Route>,
    named: Vec<NamedProvider>,
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

    /// Registers `client` under its config `name` and `kind`, so [`LlmClient::providers`]
    /// lists it.
    pub fn add_provider(&mut self, name: &str, kind: &str, client: Arc<dyn LlmClient>) {
        self.named.retain(|p| p.name != name);
        self.named.push(NamedProvider {
            name: name.to_string(),
            kind: kind.to_string(),
            client,
        });
        self.named.sort_by(|a, b| a.name.cmp(&b.name));
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
        caller: &'a str,
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
            route.provider.complete(caller, &concrete, tokens).await
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        caller: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, LlmError>> {
        let alias = request
            .model
            .as_deref()
            .unwrap_or(EmbedRequest::DEFAULT_ALIAS);
        let Some(route) = self.routes.get(alias) else {
            let known = self.aliases().join(", ");
            let message = format!(
                "embedding model alias '{alias}' is not configured (known: {known}); add it \
                 to [models], e.g. {alias} = \"openai/text-embedding-3-small\""
            );
            return async move { Err(LlmError::Rejected(message)) }.boxed();
        };
        async move {
            let mut concrete = request.clone();
            concrete.model = Some(route.model.clone());
            route.provider.embed(caller, &concrete).await
        }
        .boxed()
    }

    fn providers(&self) -> Vec<NamedProvider> {
        self.named.clone()
    }
}
