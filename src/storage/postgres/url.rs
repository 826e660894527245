//! The database URL, kept secret: its password never reaches a log, an
//! error or `--help`.

use std::fmt;

/// A `postgres://` (or `postgresql://`) URL. `Debug` and `Display` show it
/// with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Accepts URLs with the `postgres` or `postgresql` scheme.
    pub fn parse(url: &str) -> Option<Self> {
        let scheme_end = url.find("://")?;
        matches!(&url[..scheme_end], "postgres" | "postgresql").then(|| Self(url.to_owned()))
    }

    /// The URL itself, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return "***".into();
        };
        let authority_end = url[scheme_end..]
            .find(['/', '?'])
            .map_or(url.len(), |i| scheme_end + i);
        let authority = &url[scheme_end..authority_end];
        // The password sits between the first ':' of the userinfo and the
        // last '@' before the host.
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    user.to_owned()
                };
                format!(
                    "{}{masked}{}{}",
                    &url[..scheme_end],
                    &authority[at..],
                    redact_query(&url[authority_end..])
                )
            }
            None => format!(
                "{}{}",
                &url[..authority_end],
                redact_query(&url[authority_end..])
            ),
        }
    }
}

/// Masks a `password=` query parameter too.
fn redact_query(rest: &str) -> String {
    let Some(query_start) = rest.find('?') else {
        return rest.to_owned();
    };
    let params: Vec<String> = rest[query_start + 1..]
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{}?{}", &rest[..query_start], params.join("&"))
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://runstore:s3cr%40t@db:5432/runs",
                "postgres://runstore:***@db:5432/runs",
            ),
            ("postgres://runstore@db/runs", "postgres://runstore@db/runs"),
            (
                "postgresql://u:p:q@h/db?sslmode=require&password=x",
                "postgresql://u:***@h/db?sslmode=require&password=***",
            ),
            ("postgres://h/db", "postgres://h/db"),
        ] {
            let url = DatabaseUrl::parse(url).expect("postgres URL");
            assert_eq!(url.redacted(), shown);
            assert_eq!(format!("{url:?}"), format!("DatabaseUrl({shown:?})"));
            assert!(!url.to_string().contains("s3cr"));
        }
        assert!(DatabaseUrl::parse("mysql://h/db").is_none());
        assert!(DatabaseUrl::parse("./data").is_none());
    }
}
