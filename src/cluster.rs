//! Throwaway PostgreSQL clusters from the local binaries: a primary and
//! streaming replicas on free loopback ports. Used by `sluice demo` and by the
//! integration tests.
//!
//! `initdb` and `postgres` refuse to run as root, so as root every command runs
//! as the `postgres` user through `runuser`. A watchdog process stops the
//! servers and removes the directory if the owning process dies without
//! cleaning up (a killed test binary, a Ctrl-C'd demo).

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug)]
pub struct Node {
    pub port: u16,
    pub data: PathBuf,
}

#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    /// Where the servers' Unix-domain sockets are (`.s.PGSQL.<port>`): a
    /// short path of its own, since a socket path is limited to 107 bytes.
    pub socket_dir: PathBuf,
    pub bin: PathBuf,
    pub primary: Node,
    pub replicas: Vec<Node>,
    stopped: bool,
}

type Result<T> = std::result::Result<T, String>;

/// The PostgreSQL binary directory: `$SLUICE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn pg_bin() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("SLUICE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL under /usr/lib/postgresql ({e}); set SLUICE_PG_BIN"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no PostgreSQL server binaries found; set SLUICE_PG_BIN".into())
}

fn is_root() -> bool {
    // The real uid, read from /proc to avoid an unsafe libc call.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as `postgres` when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loopback port below 32768 (outside Linux's ephemeral range) that nothing
/// listens on now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 1000) as u16 * 11;
    let _ = NEXT.compare_exchange(0, 20000 + seed, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let mut port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32000 {
            NEXT.store(20000, Ordering::SeqCst);
            port = 20000;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

impl Cluster {
    /// Starts a primary and `replicas` streaming replicas under `dir`, then runs
    /// `setup_sql` on the primary as the superuser `postgres`.
    pub fn start(dir: &Path, replicas: usize, setup_sql: &str) -> Result<Cluster> {
        let bin = pg_bin()?;
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir);
                    c
                },
                "chown",
            )?;
            // Every parent must be traversable by postgres.
            let mut p = dir.parent();
            while let Some(d) = p {
                if let Ok(meta) = fs::metadata(d) {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode();
                    if mode & 0o001 == 0 {
                        let _ = fs::set_permissions(d, fs::Permissions::from_mode(mode | 0o001));
                    }
                }
                p = d.parent();
            }
        }
        let port = free_port();
        let socket_dir = std::env::temp_dir().join(format!("sluice-s{port}"));
        fs::create_dir_all(&socket_dir)
            .map_err(|e| format!("create {}: {e}", socket_dir.display()))?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres"]).arg(&socket_dir);
                    c
                },
                "chown",
            )?;
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            socket_dir,
            bin: bin.clone(),
            primary: Node {
                port,
                data: dir.join("primary"),
            },
            replicas: Vec::new(),
            stopped: false,
        };
        cluster.spawn_watchdog();
        let mut initdb = pg_command(&bin, "initdb");
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
                "-D",
            ])
            .arg(&cluster.primary.data);
        run(initdb, "initdb")?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nfsync = off\n\
             full_page_writes = off\nmax_connections = 300\nwal_keep_size = '256MB'\n\
             log_min_messages = warning\nlog_line_prefix = '%m [%p] '\n",
            cluster.primary.port,
            cluster.socket_dir.display()
        );
        append(&cluster.primary.data.join("postgresql.conf"), &conf)?;
        let hba = "local all postgres trust\n\
                   local all all scram-sha-256\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host replication all 127.0.0.1/32 trust\n\
                   host all md5_user 127.0.0.1/32 md5\n\
                   host all trust_user 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        write_file(&cluster.primary.data.join("pg_hba.conf"), hba)?;
        cluster.pg_ctl_start(0)?;
        if !setup_sql.is_empty() {
            cluster.psql(cluster.primary.port, "postgres", setup_sql)?;
        }
        for i in 0..replicas {
            let node = Node {
                port: free_port(),
                data: dir.join(format!("replica{}", i + 1)),
            };
            let mut bb = pg_command(&bin, "pg_basebackup");
            bb.args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-R", "-X", "stream", "-c", "fast", "-D"])
            .arg(&node.data);
            run(bb, "pg_basebackup")?;
            append(
                &node.data.join("postgresql.conf"),
                &format!("port = {}\n", node.port),
            )?;
            cluster.replicas.push(node);
            cluster.pg_ctl_start(i + 1)?;
        }
        Ok(cluster)
    }

    fn node(&self, index: usize) -> &Node {
        if index == 0 {
            &self.primary
        } else {
            &self.replicas[index - 1]
        }
    }

    /// Starts node `index` (0 is the primary) and waits until it accepts.
    pub fn pg_ctl_start(&self, index: usize) -> Result<()> {
        let node = self.node(index);
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.args(["-w", "-t", "60", "-D"])
            .arg(&node.data)
            .arg("-l")
            .arg(node.data.join("server.log"))
            .arg("start");
        run(c, "pg_ctl start").map(|_| ())
    }

    /// Stops node `index` (0 is the primary) at once.
    pub fn pg_ctl_stop(&self, index: usize) -> Result<()> {
        let node = self.node(index);
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.args(["-w", "-D"])
            .arg(&node.data)
            .args(["-m", "immediate", "stop"]);
        run(c, "pg_ctl stop").map(|_| ())
    }

    /// Stops a server this cluster did not start (by its data directory).
    pub fn pg_ctl_stop_dir(&self, data: &Path) -> Result<()> {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.args(["-w", "-D"]).arg(data).args(["-m", "fast", "stop"]);
        run(c, "pg_ctl stop").map(|_| ())
    }

    /// Runs SQL with psql as `user` against a port, statement by statement
    /// (so CREATE DATABASE works); returns psql's output.
    pub fn psql(&self, port: u16, user: &str, sql: &str) -> Result<String> {
        self.psql_db(port, user, "postgres", sql)
    }

    /// Like [`Cluster::psql`], in database `db`.
    pub fn psql_db(&self, port: u16, user: &str, db: &str, sql: &str) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &port.to_string(), "-U", user, "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("psql: cannot start: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| format!("psql: write: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for i in (0..=self.replicas.len()).rev() {
            let _ = self.pg_ctl_stop(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.socket_dir);
    }

    /// A detached shell that stops the servers once this process is gone.
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let as_pg = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let dir = quote(&self.dir);
        let sockets = quote(&self.socket_dir);
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             for d in {dir}/replica* {dir}/primary; do [ -f \"$d/postmaster.pid\" ] && {as_pg}{pg_ctl} -D \"$d\" -m immediate stop >/dev/null 2>&1; done; \
             rm -rf {dir} {sockets}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}
