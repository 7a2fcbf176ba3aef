//! The machine's own servers: where the nats-server and PostgreSQL binaries are, which TCP ports are free,
//! whether something listens. One answer for `tributary up`, the benchmark and the tests' testkit.
//!
//! # Layout
//! - [`find_binary`], [`nats_server_bin`], [`postgres_bin_dir`]: installed binaries.
//! - [`free_port`], [`free_port_or`], [`answers`], [`wait_listening`]: ports.
//!
//! No I/O beyond the file system and loopback sockets; starting and stopping servers is the caller's.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where installed server binaries are looked for after `PATH`.
const SYSTEM_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/bin"];

/// An installed binary by name: on `PATH`, then in /usr/sbin and /usr/local/bin.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    find_in(name, SYSTEM_DIRS.iter().map(PathBuf::from))
}

/// The nats-server binary: `$TRIBUTARY_NATS_SERVER` when set, else the installed one ([`find_binary`]).
pub fn nats_server_bin() -> Option<PathBuf> {
    pinned_or_installed(std::env::var_os("TRIBUTARY_NATS_SERVER"), "nats-server")
}

fn pinned_or_installed(pinned: Option<std::ffi::OsString>, name: &str) -> Option<PathBuf> {
    match pinned {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => find_binary(name),
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
    fn a_pinned_binary_wins_over_the_installed_one() {
        let pinned = Some("/opt/pinned/nats-server".into());
        assert_eq!(pinned_or_installed(pinned, "sh"), Some(PathBuf::from("/opt/pinned/nats-server")));
        assert_eq!(pinned_or_installed(Some("".into()), "sh"), find_binary("sh"));
        assert!(find_binary("sh").is_some() && find_binary("no-such-binary-anywhere").is_none());
    }
}
