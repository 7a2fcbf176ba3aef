//! Bearer tokens: who may write, and who may read.
//!
//! With no token configured (the default, for localhost) every route is open. Once `api.write_tokens` or
//! `api.read_tokens` holds a token, every write (any method but GET, HEAD and OPTIONS: `POST /v1/events`,
//! `PUT /v1/indices`, `POST /v1/uploads`, `POST /v1/dlq/{seq}/replay`, ...) needs
//! `Authorization: Bearer <write token>`:
//! 401 `unauthorized` (with `WWW-Authenticate: Bearer`) without a token or with one that is not configured,
//! 403 `forbidden` with a read token. Reads stay open unless `api.require_read_token`, when they need a read
//! or a write token. The probes (`/healthz`, `/readyz`) and the static pages (`/`, `/docs`,
//! `/openapi.json`), which hold no data, are always open.
//!
//! A presented token is compared with every configured one, whole, in constant time ([`ct_eq`]): the time
//! taken says nothing about how much of a token matched, nor which one. Tokens never reach logs: the
//! [`ApiToken`] type prints as `***`.

use crate::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use std::sync::Arc;
use subtle::{Choice, ConstantTimeEq};

/// Routes open whatever the tokens: probes, and pages that hold no data.
const ALWAYS_OPEN: &[&str] = &["/healthz", "/readyz", "/", "/docs", "/openapi.json"];

/// A bearer token from the configuration. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> ApiToken {
        ApiToken(token.into())
    }

    /// The token itself, for sending it (clients, tests).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ApiToken {
    fn from(s: &str) -> Self {
        ApiToken::new(s)
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// What a token must look like in the configuration.
const EXPECTING: &str = "a token string (quote one that looks like a number: [\"0123\"])";

impl<'de> Deserialize<'de> for ApiToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only strings: environment values are parsed loosely, and `[0123]` would arrive as the number 123,
        // a different token. Refusing it says to quote it.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ApiToken;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTING)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ApiToken, E> {
                Ok(ApiToken::new(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of tokens, also accepted as one bare token (`TRIBUTARY_API__WRITE_TOKENS=abc`).
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ApiToken>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<ApiToken>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of tokens or one token: {EXPECTING}")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<ApiToken>, E> {
            Ok(vec![ApiToken::new(v)])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<ApiToken>, A::Error> {
            let mut tokens = Vec::new();
            while let Some(t) = seq.next_element()? {
                tokens.push(t);
            }
            Ok(tokens)
        }
    }
    d.deserialize_any(V)
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths (never on where they differ).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// What a presented token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Not a configured token.
    None,
    /// A read token.
    Read,
    /// A write token (which reads too).
    Write,
}

/// The configured tokens, shared by every request.
#[derive(Clone)]
pub(crate) struct Auth(Arc<Tokens>);

struct Tokens {
    write: Vec<Vec<u8>>,
    read: Vec<Vec<u8>>,
    require_read: bool,
}

impl Auth {
    pub(crate) fn new(cfg: &crate::ApiConfig) -> Auth {
        let bytes = |t: &[ApiToken]| t.iter().map(|t| t.0.as_bytes().to_vec()).collect();
        Auth(Arc::new(Tokens {
            write: bytes(&cfg.write_tokens),
            read: bytes(&cfg.read_tokens),
            require_read: cfg.require_read_token,
        }))
    }

    /// Whether a request to `path` (a write or a read) needs a token under these settings.
    pub(crate) fn required(&self, path: &str, write: bool) -> bool {
        self.enabled() && !ALWAYS_OPEN.contains(&path) && (write || self.0.require_read)
    }

    fn enabled(&self) -> bool {
        !self.0.write.is_empty() || !self.0.read.is_empty()
    }

    /// Compares `presented` with every configured token (no early exit).
    fn access(&self, presented: &[u8]) -> Access {
        let any =
            |tokens: &[Vec<u8>]| tokens.iter().fold(Choice::from(0), |acc, t| acc | t.as_slice().ct_eq(presented));
        let (write, read) = (any(&self.0.write), any(&self.0.read));
        if bool::from(write) {
            Access::Write
        } else if bool::from(read) {
            Access::Read
        } else {
            Access::None
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// The middleware: answers 401 or 403 where the request's token does not allow it, else runs the route.
pub(crate) async fn check(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !auth.required(req.uri().path(), write) {
        return next.run(req).await;
    }
    let presented = bearer(req.headers());
    let has_token = presented.is_some();
    let access = presented.map_or(Access::None, |t| auth.access(t));
    match (write, access) {
        (_, Access::None) if !has_token => {
            ApiError::Unauthorized("this request needs an `Authorization: Bearer <token>` header".into())
                .into_response()
        }
        (_, Access::None) => ApiError::Unauthorized("the bearer token is not valid".into()).into_response(),
        (true, Access::Read) => {
            ApiError::Forbidden("a read token cannot write; use a write token".into()).into_response()
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiConfig;
    use axum::http::HeaderValue;

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"s3cret-token", b"s3cret-token"));
        assert!(!ct_eq(b"s3cret-token", b"s3cret-tokem"));
        assert!(!ct_eq(b"s3cret-token", b"t3cret-token"));
        assert!(!ct_eq(b"s3cret-token", b"s3cret-token-and-more"));
        assert!(!ct_eq(b"s3cret", b""));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn write_tokens_write_read_tokens_read() {
        let auth = Auth::new(&ApiConfig {
            write_tokens: vec!["w1".into(), "w2".into()],
            read_tokens: vec!["r1".into()],
            ..ApiConfig::default()
        });
        assert!(auth.enabled());
        assert_eq!(auth.access(b"w2"), Access::Write);
        assert_eq!(auth.access(b"r1"), Access::Read);
        assert_eq!(auth.access(b"w"), Access::None);
        assert_eq!(auth.access(b"r1 "), Access::None);
        assert!(!Auth::new(&ApiConfig::default()).enabled());
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            bearer(&h).map(|t| String::from_utf8(t.to_vec()).unwrap())
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Bearerabc"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_never_print() {
        let cfg = ApiConfig { write_tokens: vec!["hunter2".into()], ..ApiConfig::default() };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn tokens_come_as_lists_or_one_and_numbers_are_refused() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "one_or_many")]
            t: Vec<ApiToken>,
        }
        let parse = |s: &str| serde_json::from_str::<T>(s).map(|t| t.t.iter().map(|t| t.0.clone()).collect::<Vec<_>>());
        assert_eq!(parse(r#"{"t":["a","b"]}"#).unwrap(), ["a", "b"]);
        assert_eq!(parse(r#"{"t":"a"}"#).unwrap(), ["a"]);
        assert_eq!(parse(r#"{"t":["0123"]}"#).unwrap(), ["0123"]);
        for number in [r#"{"t":[123]}"#, r#"{"t":123}"#, r#"{"t":[1.5]}"#] {
            assert!(parse(number).unwrap_err().to_string().contains("quote"), "{number}");
        }
    }
}
