//! A private PostgreSQL cluster, for tests that stop and start the database under a running pipeline.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A cluster made with `initdb` in a temporary directory and run with `pg_ctl` on a free port (trust
/// auth, user `postgres`); stopped and deleted on drop. As root, the binaries run as the `postgres` user,
/// since PostgreSQL refuses to run as root.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_root: bool,
}

/// The newest installed PostgreSQL's binaries (Debian's layout), else the directory of the `initdb` on PATH.
fn bin_dir() -> PathBuf {
    tributary_local::postgres_bin_dir().unwrap_or_default()
}

impl PgCluster {
    /// Creates and starts one.
    pub fn start() -> PgCluster {
        let dir = std::env::temp_dir().join(crate::unique("tributary_pg"));
        std::fs::create_dir_all(&dir).expect("creating the cluster directory");
        let as_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let c = PgCluster { dir, bin: bin_dir(), port: crate::free_port(), as_root };
        if as_root {
            let ok = Command::new("chown").arg("-R").arg("postgres:postgres").arg(&c.dir).status();
            assert!(ok.is_ok_and(|s| s.success()), "chown of {} to postgres failed", c.dir.display());
        }
        let data = c.dir.join("data");
        c.run("initdb", &["-D", path(&data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        c.start_again();
        c
    }

    /// The URL of database `name` on it.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it at once (`pg_ctl stop -m immediate`: connections cut, no checkpoint, as in a crash).
    pub fn stop(&mut self) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "stop"]);
    }

    /// Starts it (again), on the same port, and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.dir.join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, path(&self.dir));
        let log = self.dir.join("log");
        self.run("pg_ctl", &["-D", path(&data), "-o", &opts, "-l", path(&log), "-w", "start"]);
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let exe = if exe.exists() { exe } else { PathBuf::from(tool) };
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {} failed: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .args(["-D", path(&data), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
