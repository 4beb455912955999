//! Bearer-token authentication on Sluice's gRPC APIs: clients (the CLI, executors, the
//! driver calling executors, executors fetching each other's shuffle outputs) send
//! `authorization: Bearer <token>` on every call; a server accepts a call only with one
//! of its tokens. Tokens live in files (one per line; a Kubernetes Secret mounted as a
//! file works), never in flags or specs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::v1::driver_client::DriverClient;
use crate::v1::executor_client::ExecutorClient;

/// A driver client that sends its token, if it has one, on every call.
pub type DriverApiClient = DriverClient<InterceptedService<Channel, BearerToken>>;

/// An executor client (the driver's) that sends its token, if it has one, on every call.
pub type ExecutorApiClient = ExecutorClient<InterceptedService<Channel, BearerToken>>;

/// Reads the tokens in `path`: one per line, blank lines and `#` comments ignored.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(format!("token file {} holds no token", path.display()));
    }
    if let Some(bad) = tokens
        .iter()
        .find(|t| t.parse::<MetadataValue<Ascii>>().is_err())
    {
        return Err(format!(
            "token file {} holds a token that is not printable ASCII ({} characters)",
            path.display(),
            bad.len()
        ));
    }
    Ok(tokens)
}

/// Client side: adds `authorization: Bearer <token>` to every request; without a token it
/// sends none (a driver without authentication).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The first token of `path`, or none without a path.
    pub fn from_file(path: Option<&Path>) -> Result<BearerToken, String> {
        let Some(path) = path else {
            return Ok(BearerToken(None));
        };
        let token = read_tokens(path)?.remove(0);
        Ok(BearerToken(Some(
            format!("Bearer {token}")
                .parse()
                .expect("checked to be ASCII"),
        )))
    }

    /// The first of `tokens` (a server's accepted tokens, which it also presents to the
    /// servers it calls); none for none.
    pub fn first_of(tokens: &[String]) -> BearerToken {
        BearerToken(tokens.first().map(|token| {
            format!("Bearer {token}")
                .parse()
                .expect("tokens are checked to be ASCII when read")
        }))
    }

    /// A client of `channel` sending this token.
    pub fn client(self, channel: Channel) -> DriverApiClient {
        DriverClient::with_interceptor(channel, self)
    }

    /// An executor client of `channel` sending this token.
    pub fn executor_client(self, channel: Channel) -> ExecutorApiClient {
        ExecutorClient::with_interceptor(channel, self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Server side: lets a call through only with one of the accepted tokens, else answers
/// `UNAUTHENTICATED` before the service sees it; an open check lets every call through.
#[derive(Debug, Clone)]
pub struct TokenCheck(Option<Arc<HashSet<String>>>);

impl TokenCheck {
    pub fn new(tokens: Vec<String>) -> TokenCheck {
        TokenCheck(Some(Arc::new(tokens.into_iter().collect())))
    }

    /// Checks `tokens` when there are some; lets every call through otherwise.
    pub fn optional(tokens: Option<Vec<String>>) -> TokenCheck {
        TokenCheck(tokens.map(|tokens| Arc::new(tokens.into_iter().collect())))
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(accepted) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if accepted.contains(token) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the bearer token is not valid")),
            None => Err(Status::unauthenticated(
                "a bearer token is required (sluice --token-file, or SLUICE_TOKEN_FILE)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    #[test]
    fn the_check_accepts_listed_tokens_only() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# cluster tokens\nalpha\n\n beta \n").unwrap();
        assert_eq!(read_tokens(&file).unwrap(), ["alpha", "beta"]);
        let mut check = TokenCheck::new(read_tokens(&file).unwrap());

        let mut with = |token: Option<&str>| {
            let mut sender = match token {
                Some(t) => BearerToken(Some(format!("Bearer {t}").parse().unwrap())),
                None => BearerToken::default(),
            };
            let request = sender.call(Request::new(())).unwrap();
            check.call(request).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(with(Some("beta")), Ok(()));
        assert_eq!(with(Some("gamma")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(None), Err(tonic::Code::Unauthenticated));

        std::fs::write(&file, "\n# none\n").unwrap();
        assert!(read_tokens(&file).unwrap_err().contains("holds no token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
