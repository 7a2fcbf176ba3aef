//! Security: NATS users and permissions from the deployed config, NKeys, TLS (server-only and mutual),
//! API bearer tokens and HTTPS on the API (secrets kept out of logs: `secrets.rs`).

use crate::common::spawn_app_with;
use async_nats::jetstream;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary::app::connect_nats;
use tributary::config::NatsConfig;
use tributary_broker::{StreamsConfig, streams};
use tributary_testkit::{NatsServer, eventually, unique};

/// Every user of broker/nats/accounts.conf.
const USERS: [&str; 9] = [
    "admin",
    "migrate",
    "processor",
    "api",
    "aggregator",
    "gatherer-prices",
    "gatherer-metrics",
    "gatherer-ports",
    "gatherer-fleet",
];

/// A folder deleted on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nats-server started from the deployed broker/nats/single.conf + accounts.conf, a fresh password per
/// user in its environment.
pub(crate) struct Broker {
    server: NatsServer,
    passwords: Vec<(&'static str, String)>,
}

impl Broker {
    pub(crate) fn start() -> Broker {
        let passwords: Vec<(&str, String)> = USERS.iter().map(|u| (*u, unique(&format!("pw-{u}")))).collect();
        let env: Vec<(String, String)> = passwords
            .iter()
            .map(|(u, pw)| (format!("NATS_{}_PASSWORD", u.to_uppercase().replace('-', "_")), pw.clone()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker/nats/single.conf");
        Broker { server: NatsServer::with_config(&conf, &env), passwords }
    }

    pub(crate) fn password(&self, user: &str) -> &str {
        &self.passwords.iter().find(|(u, _)| *u == user).expect("a known user").1
    }

    /// `nats://<user>:<password>@127.0.0.1:<port>`, as a role's `NATS_URL`.
    pub(crate) fn url(&self, user: &str) -> String {
        format!("nats://{user}:{}@127.0.0.1:{}", self.password(user), self.server.port())
    }

    async fn js(&self, user: &str) -> jetstream::Context {
        let client = connect_nats(&NatsConfig::with_url(self.url(user))).await.expect("a role logs in");
        let mut js = jetstream::new(client);
        // A denied JetStream request is dropped by the server: it ends in this timeout.
        js.set_timeout(Duration::from_secs(2));
        js
    }

    /// Waits for the server to log a publish violation by `user` on `subject` (or on its partitioned form
    /// `<kind>.p.<n>.<key>`, which the streams' subject transforms make of prices and metrics).
    ///
    /// nats-server 2.9 logs `Publish Violation - User "<user>", Subject "<subject>"`; 2.10 on name the
    /// client first (`"<account>/user:<user>" - Publish Violation - Subject "<subject>"`).
    async fn violation_logged(&self, user: &str, subject: &str) {
        let prefix = format!("Publish Violation - User {user:?}, Subject \"");
        let (client, current) = (format!("/user:{user}\""), "Publish Violation - Subject \"");
        let denied = |line: &str| -> Option<String> {
            let rest = match line.find(&prefix) {
                Some(at) => &line[at + prefix.len()..],
                None if line.contains(&client) => &line[line.find(current)? + current.len()..],
                None => return None,
            };
            let logged = &rest[..rest.find('"')?];
            let mut t: Vec<&str> = logged.split('.').collect();
            if t.len() > 3 && t[1] == "p" && t[2].bytes().all(|b| b.is_ascii_digit()) {
                t.drain(1..3);
            }
            Some(t.join("."))
        };
        eventually(Duration::from_secs(10), &format!("{prefix}{subject}\" in the server's log"), || {
            let found = self.server.log().lines().any(|l| denied(l).as_deref() == Some(subject));
            async move { found.then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_log_in_with_their_url_credentials_and_stay_within_their_permissions() {
    let broker = Broker::start();
    // gatherer-prices does its job: creates the streams at startup, publishes prices, JetStream stores them.
    let prices = broker.js("gatherer-prices").await;
    streams::ensure(&prices, &StreamsConfig::default(), 8).await.expect("every role may ensure the streams");
    let ack = prices.publish("price.SEC", r#"{"price":1.5}"#.into()).await.unwrap().await.expect("an ack");
    assert_eq!(ack.stream, "PRICES");

    // Outside its permissions: the server drops the message and says so; no ack, nothing stored.
    let denied = prices.publish("metric.SEC", r#"{"cpu_usage":1}"#.into()).await.unwrap().await;
    assert!(denied.is_err(), "a publish to metric.SEC was acked for gatherer-prices: {denied:?}");
    broker.violation_logged("gatherer-prices", "metric.SEC").await;
    let admin = broker.js("admin").await;
    assert_eq!(admin.get_stream("METRICS").await.unwrap().info().await.unwrap().state.messages, 0);

    // The api user cannot delete a stream.
    let api = broker.js("api").await;
    assert!(api.delete_stream("PRICES").await.is_err(), "the api user deleted a stream");
    broker.violation_logged("api", "$JS.API.STREAM.DELETE.PRICES").await;
    assert_eq!(admin.get_stream("PRICES").await.unwrap().info().await.unwrap().state.messages, 1);

    // The api user records a dead letter's replay and reads it back (a replay asked again answers the
    // first one from it).
    use tributary_broker::dlq::{Replayed, Replays};
    let dlq = admin.get_stream("DLQ").await.unwrap().info().await.unwrap().clone();
    let replays = Replays::open(&api, &dlq).await.expect("the api user opens the replays' bucket");
    let at = Replayed { stream: "PRICES".into(), seq: 7 };
    replays.record(1, &at).await.expect("the api user records a replay");
    assert_eq!(replays.of(1).await.expect("and reads it"), Some(at));
}

#[tokio::test]
async fn a_client_without_credentials_or_with_a_wrong_password_is_refused() {
    let broker = Broker::start();
    for url in [broker.server.url(), format!("nats://api:wrong@127.0.0.1:{}", broker.server.port())] {
        let e = connect_nats(&NatsConfig::with_url(url)).await.expect_err("refused");
        let said = format!("{e:#}");
        assert!(said.contains("authorization violation"), "{said}");
        assert!(!said.contains("wrong"), "the password is in the error: {said}");
    }
}

/// Publishes on core NATS and reads it back: the connection really carries traffic.
async fn round_trip(client: &async_nats::Client) {
    let mut sub = client.subscribe("security.check").await.unwrap();
    client.publish("security.check", "hello".into()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("the message").unwrap();
    assert_eq!(&got.payload[..], b"hello");
}

#[tokio::test]
async fn an_nkey_seed_file_authenticates_and_other_keys_are_refused() {
    let dir = TempDir::new("nkeys");
    let user = nkeys::KeyPair::new_user();
    let conf = dir.join("nkeys.conf");
    std::fs::write(&conf, format!("authorization {{ users = [ {{ nkey: {} }} ] }}\n", user.public_key())).unwrap();
    let server = NatsServer::with_config(&conf, &[]);
    let seed_file = |name: &str, seed: String| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{seed}\n")).unwrap();
        path
    };
    let mut cfg = NatsConfig::with_url(server.url());
    cfg.nkey_seed_file = Some(seed_file("role.nk", user.seed().unwrap()));
    round_trip(&connect_nats(&cfg).await.expect("the seed's user logs in")).await;

    let stranger = nkeys::KeyPair::new_user();
    cfg.nkey_seed_file = Some(seed_file("stranger.nk", stranger.seed().unwrap()));
    let said = format!("{:#}", connect_nats(&cfg).await.expect_err("an unknown key is refused"));
    assert!(said.contains("authorization violation"), "{said}");
    assert!(!said.contains(&stranger.seed().unwrap()), "the seed is in the error: {said}");
    assert!(connect_nats(&NatsConfig::with_url(server.url())).await.is_err(), "no key is refused");
}

/// A private CA and, signed by it, a certificate for 127.0.0.1 (server) and one for a client, as PEM
/// files.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = TempDir::new("pki");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "tributary test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for (name, usage) in
            [("server", ExtendedKeyUsagePurpose::ServerAuth), ("client", ExtendedKeyUsagePurpose::ClientAuth)]
        {
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &*ca).unwrap();
            std::fs::write(dir.join(&format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(&format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A nats-server config serving TLS with the server certificate; `verify` asks clients for theirs.
    fn nats_conf(&self, verify: bool) -> PathBuf {
        let mut tls = format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 2\n",
            self.path("server.pem").display().to_string(),
            self.path("server.key").display().to_string()
        );
        if verify {
            tls += &format!("  ca_file: {:?}\n  verify: true\n", self.path("ca.pem").display().to_string());
        }
        let file = self.path(if verify { "mtls.conf" } else { "tls.conf" });
        std::fs::write(&file, tls + "}\n").unwrap();
        file
    }
}

#[tokio::test]
async fn nats_over_tls_with_a_private_ca_and_plain_text_gets_nothing() {
    let pki = Pki::new();
    let server = NatsServer::with_config(&pki.nats_conf(false), &[]);
    let mut cfg = NatsConfig::with_url(server.url());
    cfg.tls_ca_file = Some(pki.path("ca.pem"));
    cfg.tls_required = true;
    round_trip(&connect_nats(&cfg).await.expect("TLS with the private CA")).await;

    // Without the CA the server's certificate is not trusted.
    let said = format!("{:#}", connect_nats(&NatsConfig::with_url(server.url())).await.expect_err("untrusted"));
    assert!(said.to_lowercase().contains("tls") || said.contains("certificate"), "{said}");

    // A client speaking plain text gets the INFO that demands TLS, then the connection closes: no PONG.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port())).await.unwrap();
    let mut info = vec![0u8; 4096];
    let n = tcp.read(&mut info).await.unwrap();
    assert!(String::from_utf8_lossy(&info[..n]).contains(r#""tls_required":true"#));
    tcp.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await.expect("closed");
    assert!(!String::from_utf8_lossy(&rest).contains("PONG"), "a plain-text client was served");

    // tls_required refuses a server without TLS.
    let plain = NatsServer::start();
    let mut cfg = NatsConfig::with_url(plain.url());
    cfg.tls_required = true;
    assert!(connect_nats(&cfg).await.is_err(), "tls_required connected to a plain server");
}

#[tokio::test]
async fn nats_client_certificates_when_the_server_verifies_them() {
    let pki = Pki::new();
    let server = NatsServer::with_config(&pki.nats_conf(true), &[]);
    // A tls:// URL asks for TLS by itself.
    let mut cfg = NatsConfig::with_url(server.url().replace("nats://", "tls://"));
    cfg.tls_ca_file = Some(pki.path("ca.pem"));
    let said = format!("{:#}", connect_nats(&cfg).await.expect_err("connected without a client certificate"));
    assert!(said.contains("Certificate"), "{said}");
    cfg.tls_cert_file = Some(pki.path("client.pem"));
    cfg.tls_key_file = Some(pki.path("client.key"));
    round_trip(&connect_nats(&cfg).await.expect("mutual TLS")).await;
}

pub(crate) async fn call(
    app_base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut r = reqwest::Client::new().request(method, format!("{app_base}{path}")).body(body.to_owned());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn error_code(r: reqwest::Response) -> (StatusCode, Option<String>, String) {
    let status = r.status();
    let challenge = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, challenge, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_write_token_reads_stay_open() {
    let app = spawn_app_with(|c| {
        c.api.write_tokens = vec!["write-token-1".into(), "write-token-2".into()];
        c.api.read_tokens = vec!["read-token".into()];
    })
    .await;
    let price = r#"{"ts":"2026-01-02","price":10}"#;
    let writes = [
        (Method::POST, "/v1/events/price.SEC", price),
        (Method::PUT, "/v1/indices/sec", r#"{"base":100,"weights":{"SEC":1}}"#),
        (Method::POST, "/v1/uploads?kind=numbers", "1\n2\n"),
        (Method::POST, "/v1/dlq/1/replay", ""),
    ];
    for (method, path, body) in writes {
        let (status, challenge, code) = error_code(call(&app.base, method.clone(), path, None, body).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{method} {path}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{method} {path}: no WWW-Authenticate");
        let (status, _, code) =
            error_code(call(&app.base, method.clone(), path, Some("write-token-3"), body).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{method} {path}");
        let (status, _, code) = error_code(call(&app.base, method.clone(), path, Some("read-token"), body).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{method} {path}");
    }
    // A write token writes (either of them); nothing was published by the refused requests.
    let r = call(&app.base, Method::POST, "/v1/events/price.SEC", Some("write-token-2"), price).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["seq"], 1, "a refused write reached the stream: {body}");
    let r =
        call(&app.base, Method::PUT, "/v1/indices/sec", Some("write-token-1"), r#"{"base":100,"weights":{"SEC":1}}"#);
    assert!(r.await.status().is_success());
    // Reads need no token.
    let (status, _) = app.get("/v1/series/price/SEC?fresh=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call(&app.base, Method::GET, "/v1/indices", None, "").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_token_when_required_and_probes_stay_open() {
    let app = spawn_app_with(|c| {
        c.api.write_tokens = vec!["w".into()];
        c.api.read_tokens = vec!["r".into()];
        c.api.require_read_token = true;
    })
    .await;
    let (status, challenge, code) = error_code(call(&app.base, Method::GET, "/v1/series/price", None, "").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert!(challenge.is_some());
    let (status, _, _) = error_code(call(&app.base, Method::GET, "/v1/series/price", Some("x"), "").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for token in ["r", "w"] {
        assert_eq!(call(&app.base, Method::GET, "/v1/series/price", Some(token), "").await.status(), StatusCode::OK);
    }
    for open in ["/healthz", "/readyz", "/", "/docs", "/openapi.json"] {
        assert_eq!(call(&app.base, Method::GET, open, None, "").await.status(), StatusCode::OK, "{open}");
    }
    assert_eq!(call(&app.base, Method::GET, "/metrics", None, "").await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_the_configured_certificate_and_refuses_plain_http() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let app = spawn_app_with(|c| {
        c.api.tls_cert_file = Some(cert);
        c.api.tls_key_file = Some(key);
    })
    .await;
    assert!(app.base.starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
    let r = https.get(format!("{}/healthz", app.base)).send().await.expect("HTTPS with the private CA");
    assert_eq!(r.status(), StatusCode::OK);
    let r = https.post(format!("{}/v1/events/price.TLS", app.base)).body(r#"{"price":2}"#).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let plain = reqwest::Client::new().get(format!("{}/healthz", app.base.replace("https://", "http://"))).send().await;
    assert!(plain.is_err(), "plain HTTP was answered on the TLS port: {plain:?}");
    let untrusted = reqwest::Client::new().get(format!("{}/healthz", app.base)).send().await;
    assert!(untrusted.is_err(), "a client that does not trust the CA connected");

    // Graceful shutdown still ends the server.
    app.shutdown();
    eventually(Duration::from_secs(15), "the HTTPS API to stop", || {
        let done = app.api_finished();
        async move { done.then_some(()) }
    })
    .await;
}
