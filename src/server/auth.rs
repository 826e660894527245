//! Optional bearer-token authentication of the persistence service, with
//! scopes per token. Health and reflection stay open so probes and tools
//! work without a token.
//!
//! The interceptor authenticates (UNAUTHENTICATED for a missing or unknown
//! token) and puts the token's [`Scopes`] into the request's extensions;
//! each handler then requires its RPC's [`Scope`] before it validates
//! anything (PERMISSION_DENIED).

use std::{fs, io, path::Path, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::{Extensions, Request, Status};

/// What a token may do: `read` (the Get/List RPCs), `write` (CompleteRun),
/// `delete` (DeleteRun).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Delete,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Delete => 4,
        }
    }
}

/// The scopes of the token a call was authenticated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(1 | 2 | 4);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

/// Whether a call may use `scope`. A call without [`Scopes`] in its
/// extensions was not authenticated because auth is off: it may do
/// everything.
pub fn permits(extensions: &Extensions, scope: Scope) -> bool {
    extensions
        .get::<Scopes>()
        .is_none_or(|scopes| scopes.contains(scope))
}

/// The accepted tokens, kept only as SHA-256 digests with their scopes:
/// comparing digests of equal length in constant time reveals neither a
/// token nor its length.
#[derive(Clone)]
pub struct BearerTokens {
    tokens: Arc<[([u8; 32], Scopes)]>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerTokens({} tokens)", self.tokens.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no tokens (one per line; '#' starts a comment)")]
    Empty { path: String },
    #[error(
        "{path}, line {line}: unknown scope {scope:?} (the scopes are read, write and delete, \
         comma-separated after the token: `TOKEN read,write`)"
    )]
    UnknownScope {
        path: String,
        line: usize,
        scope: String,
    },
}

impl BearerTokens {
    /// Reads tokens, one per line: `TOKEN` alone has every scope, `TOKEN
    /// read,write` the ones named. Blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self, TokensError> {
        let shown = || path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown(),
            source,
        })?;
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (token, scopes) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let scopes = parse_scopes(scopes).map_err(|scope| TokensError::UnknownScope {
                path: shown(),
                line: n + 1,
                scope,
            })?;
            tokens.push((token, scopes));
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty { path: shown() });
        }
        Ok(Self::with_scopes(tokens))
    }

    /// Tokens with every scope.
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with_scopes(tokens.into_iter().map(|t| (t, Scopes::ALL)))
    }

    fn with_scopes<'a>(tokens: impl IntoIterator<Item = (&'a str, Scopes)>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .map(|(t, scopes)| (Sha256::digest(t).into(), scopes))
                .collect(),
        }
    }

    /// The token's scopes, or `None` when it is not accepted.
    fn accepts(&self, token: &str) -> Option<Scopes> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Every configured token is compared, so timing does not say which
        // (or whether an early one) matched.
        let (found, scopes) = self.tokens.iter().fold(
            (subtle::Choice::from(0), 0u8),
            |(found, scopes), (known, known_scopes)| {
                let matched = known.ct_eq(&digest);
                (
                    found | matched,
                    u8::conditional_select(&scopes, &known_scopes.0, matched),
                )
            },
        );
        bool::from(found).then_some(Scopes(scopes))
    }

    /// A tonic interceptor: `authorization: Bearer <token>` must carry an
    /// accepted token, or the call gets UNAUTHENTICATED.
    #[allow(clippy::result_large_err)] // the interceptor signature is tonic's
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("`authorization` must be `Bearer <token>`"))?;
        let scopes = self
            .accepts(token.trim())
            .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
        let mut request = request;
        request.extensions_mut().insert(scopes);
        Ok(request)
    }
}

/// A comma-separated scope list; empty means every scope. `Err` names the
/// first unknown scope.
fn parse_scopes(list: &str) -> Result<Scopes, String> {
    if list.trim().is_empty() {
        return Ok(Scopes::ALL);
    }
    let mut bits = 0;
    for name in list.split(',').map(str::trim) {
        let scope = Scope::ALL
            .into_iter()
            .find(|scope| scope.name() == name)
            .ok_or_else(|| name.to_owned())?;
        bits |= scope.bit();
    }
    Ok(Scopes(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens_with_their_scopes() {
        let tokens = BearerTokens::with_scopes([
            ("alpha", Scopes::ALL),
            ("beta", parse_scopes("read, delete").expect("scopes")),
        ]);
        assert_eq!(tokens.accepts("alpha"), Some(Scopes::ALL));
        let beta = tokens.accepts("beta").expect("beta");
        assert!(beta.contains(Scope::Read) && beta.contains(Scope::Delete));
        assert!(!beta.contains(Scope::Write));
        assert_eq!(tokens.accepts("alph"), None);
        assert_eq!(tokens.accepts(""), None);
    }

    #[test]
    fn scope_lists_name_known_scopes_only() {
        assert_eq!(parse_scopes(""), Ok(Scopes::ALL));
        assert_eq!(parse_scopes("read,write,delete"), Ok(Scopes::ALL));
        assert_eq!(parse_scopes("write"), Ok(Scopes(2)));
        assert_eq!(parse_scopes("read,admin"), Err("admin".into()));
        assert_eq!(parse_scopes("Read"), Err("Read".into()));
    }
}
