//! A private nats-server per test.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server with JetStream, stopped and its store deleted on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts one on a free port (`$TRIBUTARY_NATS_SERVER`, else the pinned version, installed when missing).
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// Starts one with `config` added to its configuration file (e.g. subject `mappings`); the port,
    /// JetStream and its store are set here.
    pub fn start_with(config: &str) -> NatsServer {
        let dir = std::env::temp_dir().join(crate::unique("tributary_nats"));
        std::fs::create_dir_all(&dir).expect("creating the nats store dir");
        let mut args: Vec<OsString> = Vec::new();
        if !config.is_empty() {
            let file = dir.join("nats.conf");
            std::fs::write(&file, config).expect("writing the nats config");
            args.extend(["-c".into(), file.into()]);
        }
        args.extend(["-js".into(), "-sd".into(), dir.clone().into()]);
        let mut s = NatsServer { child: None, port: crate::free_port(), dir, args, env: Vec::new() };
        s.spawn();
        s.wait_listening(true);
        s
    }

    /// Starts one from `config` without waiting for it to listen (cluster nodes start together).
    fn start_nowait(config: &str) -> NatsServer {
        let dir = std::env::temp_dir().join(crate::unique("tributary_nats"));
        std::fs::create_dir_all(&dir).expect("creating the nats store dir");
        let file = dir.join("nats.conf");
        std::fs::write(&file, config).expect("writing the nats config");
        let args = vec!["-c".into(), file.into(), "-js".into(), "-sd".into(), dir.clone().into()];
        let mut s = NatsServer { child: None, port: crate::free_port(), dir, args, env: Vec::new() };
        s.spawn();
        s
    }

    /// Starts one from the configuration file `config` as deployed (its users, permissions, TLS), on a
    /// free port with its own store. The file and the `.conf` files beside it (what it `include`s) are
    /// copied into the server's directory, with every `store_dir` pointed there; the client and monitoring
    /// addresses are set on the command line, which overrides the file's. `env` is added to the server's
    /// environment, for the `$VARIABLE`s the files read.
    pub fn with_config(config: &Path, env: &[(&str, &str)]) -> NatsServer {
        let dir = std::env::temp_dir().join(crate::unique("tributary_nats"));
        let store = dir.join("store");
        std::fs::create_dir_all(&store).expect("creating the nats store dir");
        let from = config.parent().expect("a config file in a directory");
        for entry in std::fs::read_dir(from).expect("reading the config's directory") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "conf") || path.file_name() == config.file_name() {
                let text = std::fs::read_to_string(&path).expect("reading a nats config file");
                let text: Vec<String> = text
                    .lines()
                    .map(|l| match l.trim_start().starts_with("store_dir") {
                        true => format!("  store_dir: {:?}", store.display().to_string()),
                        false => l.to_owned(),
                    })
                    .collect();
                std::fs::write(dir.join(path.file_name().unwrap()), text.join("\n")).expect("copying a config");
            }
        }
        let file = dir.join(config.file_name().expect("a config file name"));
        let args = vec!["-c".into(), file.into(), "-m".into(), crate::free_port().to_string().into()];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut s = NatsServer { child: None, port: crate::free_port(), dir, args, env };
        s.spawn();
        s.wait_listening(true);
        s
    }

    /// Waits until this server logs that it listens for clients on its port. Its own log, not a TCP connect:
    /// a connect can reach another test's server that took the port first (this one then fails to bind),
    /// or the connecting socket itself (a TCP self-connect, when its ephemeral port is the one asked). On
    /// a first start (`may_move`) a port taken meanwhile is given up for a fresh one.
    fn wait_listening(&mut self, may_move: bool) {
        // Generous: a node recovering replicated streams on a machine busy with the whole suite is slow.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if log.contains(&format!("Listening for client connections on 127.0.0.1:{}", self.port)) {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some()
                && may_move
                && log.contains(&format!("127.0.0.1:{}: bind: address already in use", self.port))
            {
                self.port = crate::free_port();
                self.spawn();
                continue;
            }
            if exited.is_some() || Instant::now() >= deadline {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "nats-server did not start on port {} (exit: {exited:?}); its log ends:\n{}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(&mut self) {
        let bin = tributary_local::nats_server_bin().unwrap_or_else(|e| panic!("{e}"));
        let log = self.dir.join("nats.log");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the nats log"))
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// Stops the server (SIGKILL), keeping its store.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP; `false`: SIGCONT): its connections stay open and nothing answers, as
    /// a server stalled by its host does.
    pub fn freeze(&self, frozen: bool) {
        let Some(c) = &self.child else { return };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill").args([signal, &c.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} nats-server");
        // The signal is delivered a moment after `kill` returns: a request sent meanwhile was answered
        // (seen once on a loaded machine). Wait until every thread of it is stopped, or none is.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while all_threads_stopped(c.id()) != Some(frozen) {
            assert!(std::time::Instant::now() < deadline, "nats-server never took kill {signal}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_listening(false);
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`); `None` when it cannot be read.
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut all = true;
    for task in tasks {
        let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
        // `pid (comm) S ...`: the state follows the last ')'.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        all &= state == "T";
    }
    Some(all)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three (or more) private nats-servers forming one JetStream cluster on loopback, each node stoppable
/// and restartable with its store; all stopped and their stores deleted on drop.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes routed to each other.
    pub fn start(n: usize) -> NatsCluster {
        let name = crate::unique("c");
        let routes: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let route_list: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let nodes = (0..n)
            .map(|i| {
                let config = format!(
                    "server_name: n{i}\ncluster {{\n  name: {name}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    routes[i],
                    route_list.join(", ")
                );
                NatsServer::start_nowait(&config)
            })
            .collect::<Vec<_>>();
        let mut c = NatsCluster { nodes };
        for node in &mut c.nodes {
            node.wait_listening(true);
        }
        c
    }

    /// Every node's URL, comma-separated (a client fails over between them).
    pub fn url(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// One node.
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}
