//! A headless Chromium driven over the Chrome DevTools Protocol: open a page, evaluate JavaScript in it,
//! take a screenshot. Debian's `chromium` package (`scripts/test.sh` installs it when missing); the
//! binary can be named with `CHROMIUM`.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless Chromium with one page, killed (and its profile deleted) on drop.
pub struct Browser {
    child: Child,
    page: Socket,
    next_id: u64,
    profile: PathBuf,
}

/// The Chromium binary: `$CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` on the PATH.
pub fn chromium_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts Chromium headless on `url` and attaches to its page.
    pub async fn open(url: &str) -> Browser {
        let bin = chromium_bin().expect("Chromium not found: install Debian's chromium package (scripts/test.sh does)");
        let profile = std::env::temp_dir().join(format!("tributary-chromium-{}", crate::unique("p")));
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        // "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
        let stderr = tokio::process::ChildStderr::from_std(child.stderr.take().unwrap()).unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().to_owned();
                }
            }
            panic!("Chromium exited before its DevTools endpoint was up")
        })
        .await
        .expect("Chromium's DevTools endpoint within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let page_ws = crate::eventually(Duration::from_secs(20), "Chromium's page target", || {
            let port = port.clone();
            async move {
                let list: Value =
                    reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.ok()?.json().await.ok()?;
                list.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            }
        })
        .await;
        let (page, _) = tokio_tungstenite::connect_async(page_ws).await.expect("attaching to the page");
        Browser { child, page, next_id: 0, profile }
    }

    /// Sends one DevTools command and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.page.send(Message::Text(msg.into())).await.expect("sending to Chromium");
        loop {
            let m = self.page.next().await.expect("Chromium closed the page").expect("reading from Chromium");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value (awaiting promises).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression} threw: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Saves a PNG of the page as it is now.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
