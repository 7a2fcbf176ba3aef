//! Credentials written in URLs: reading them (async-nats does not send those in its URL) and hiding them
//! from logs. Shared by the configuration (which checks and prints URLs) and the connections.

/// The credentials in a NATS URL: `nats://user:password@host` or `nats://token@host` (percent-decoded).
/// async-nats does not send the ones written in the URL, so they are passed as options.
pub fn nats_credentials(urls: &str) -> Option<NatsAuth> {
    urls.split(',').find_map(|u| {
        let u = reqwest::Url::parse(u.trim()).ok()?;
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        match (u.username(), u.password()) {
            ("", _) => None,
            (user, Some(pass)) => Some(NatsAuth::UserPassword(decode(user), decode(pass))),
            (token, None) => Some(NatsAuth::Token(decode(token))),
        }
    })
}

/// How a role authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// User and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
}

/// The URL(s) with user, password and token removed (they are passed as options).
pub(crate) fn without_credentials(urls: &str) -> String {
    map_urls(urls, |u| {
        let _ = u.set_username("");
        let _ = u.set_password(None);
    })
}

/// Applies `f` to each comma-separated URL that parses and carries credentials; others are kept as written.
fn map_urls(urls: &str, f: impl Fn(&mut reqwest::Url)) -> String {
    urls.split(',')
        .map(|raw| match reqwest::Url::parse(raw.trim()) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                f(&mut u);
                u.to_string()
            }
            _ => raw.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// URL(s) with their passwords replaced by `***`, for logs (a user name alone, as in
/// `postgres://postgres@host/db`, is kept).
pub fn redact(url: &str) -> String {
    map_urls(url, |u| {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
    })
}

/// NATS URL(s) for logs: passwords replaced by `***`, and a lone user part too, since for NATS
/// `nats://token@host` is a token.
pub fn redact_nats(url: &str) -> String {
    map_urls(url, |u| {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        } else {
            let _ = u.set_username("***");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url() {
        assert_eq!(
            nats_credentials("nats://api:s%40cret@nats:4222"),
            Some(NatsAuth::UserPassword("api".into(), "s@cret".into()))
        );
        assert_eq!(nats_credentials("nats://a:4222,nats://tok@b:4222"), Some(NatsAuth::Token("tok".into())));
        assert_eq!(nats_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(redact("nats://api:secret@nats:4222"), "nats://api:***@nats:4222");
    }

    #[test]
    fn redaction_hides_passwords_and_nats_tokens_in_every_url() {
        assert_eq!(redact("postgres://postgres@db:5432/t"), "postgres://postgres@db:5432/t");
        assert_eq!(
            redact("postgres://app:pw@db:5432/t?sslmode=require"),
            "postgres://app:***@db:5432/t?sslmode=require"
        );
        assert_eq!(
            redact_nats("nats://a:one@n1:4222,nats://tok@n2:4222,nats://n3:4222"),
            "nats://a:***@n1:4222,nats://***@n2:4222,nats://n3:4222"
        );
        assert_eq!(redact_nats("tls://u:p%40ss@n:4222"), "tls://u:***@n:4222");
        assert_eq!(without_credentials("nats://a:s@n1:4222, nats://tok@n2:4222"), "nats://n1:4222,nats://n2:4222");
        assert_eq!(without_credentials("127.0.0.1:4222"), "127.0.0.1:4222");
    }
}
