//! Optional bearer-token authentication of the persistence service. Health
//! and reflection stay open so probes and tools work without a token.

use std::{fs, io, path::Path, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The accepted tokens, kept only as SHA-256 digests: comparing digests of
/// equal length in constant time reveals neither a token nor its length.
#[derive(Clone)]
pub struct BearerTokens {
    digests: Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerTokens({} tokens)", self.digests.len())
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
}

impl BearerTokens {
    /// Reads tokens, one per line; blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self, TokensError> {
        let text = fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let tokens = Self::new(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#')),
        );
        if tokens.digests.is_empty() {
            return Err(TokensError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(tokens)
    }

    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            digests: tokens
                .into_iter()
                .map(|t| Sha256::digest(t).into())
                .collect(),
        }
    }

    fn accepts(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Every configured token is compared, so timing does not say which
        // (or whether an early one) matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&digest)
            })
            .into()
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
        if self.accepts(token.trim()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = BearerTokens::new(["alpha", "beta"]);
        assert!(tokens.accepts("alpha"));
        assert!(tokens.accepts("beta"));
        assert!(!tokens.accepts("alph"));
        assert!(!tokens.accepts(""));
    }
}
