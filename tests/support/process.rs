//! The built `sluice` binary as a process of its own, on free loopback ports, with its log kept
//! for the test to read: `Process::start(toml, env)`, or `Process::new().args(…).start()` for
//! other command lines. Killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{free_port, temp_file};

/// The built binary, to run a subcommand of.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// `sluice check --config FILE` with FILE holding `toml`: its exit code and stderr.
pub fn check(toml: &str) -> (Option<i32>, String) {
    let file = temp_file("check.toml", toml);
    let out = command()
        .arg("check")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

/// A running `sluice` process.
pub struct Process {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    config: Option<PathBuf>,
    log: PathBuf,
}

/// A `sluice` command line being put together; `start` runs it.
#[derive(Default)]
pub struct Launch {
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    open_files: Option<u64>,
}

impl Launch {
    /// `--config FILE`, FILE holding `toml` (a reload re-reads it).
    pub fn config(mut self, toml: &str) -> Launch {
        self.config = Some(toml.to_string());
        self
    }

    /// More arguments, such as `["--upstream", url]`.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Runs the binary with its open file limit (soft and hard) at `n`.
    pub fn open_files(mut self, n: u64) -> Launch {
        self.open_files = Some(n);
        self
    }

    /// The command that runs the binary: through `sh`, to lower its open file limit first.
    fn command(&self) -> Command {
        let Some(n) = self.open_files else {
            return command();
        };
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_sluice"));
        sh
    }

    /// Runs the binary with the proxy and admin listeners on free loopback ports and, unless
    /// the config sets `server.workers`, one worker; returns once the proxy listens. A port
    /// another test took between its release and the bind makes the binary exit at once:
    /// then it starts again on other ports.
    pub async fn start(self) -> Process {
        let log = temp_file("sluice.log", "");
        let mut config = None;
        if let Some(toml) = &self.config {
            config = Some(temp_file("sluice.toml", toml));
        }
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            let mut cmd = self.command();
            if let Some(file) = &config {
                cmd.arg("--config").arg(file);
            }
            cmd.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
            if !self.config.as_deref().is_some_and(sets_workers) {
                cmd.args(["--workers", "1"]);
            }
            let mut child = cmd
                .args(&self.args)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            if listening(addr, &mut child).await {
                return Process {
                    addr,
                    admin: format!("127.0.0.1:{admin}").parse().unwrap(),
                    child,
                    config,
                    log,
                };
            }
        }
        panic!(
            "sluice did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

/// Waits (up to 5 s) until `child` listens on `addr`; false if it exits first.
async fn listening(addr: SocketAddr, child: &mut Child) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

fn sets_workers(toml: &str) -> bool {
    let table: toml::Table = toml.parse().unwrap();
    table.get("server").and_then(|s| s.get("workers")).is_some()
}

impl Process {
    /// A command line to put together.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Launch {
        Launch::default()
    }

    /// `sluice --config FILE` (FILE holding `toml`) with the extra environment variables `env`.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Process {
        let launch = Process::new().config(toml);
        env.iter()
            .fold(launch, |l, (name, value)| l.env(name, value))
            .start()
            .await
    }

    /// The process's open file descriptors now.
    pub fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.child.id());
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's lines as JSON values (the process runs with `--log-format json`); a line still
    /// being written is left out.
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        let log = self.log();
        let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// What the process's open file descriptors point at (`/proc/PID/fd`): `socket:[…]`,
    /// `anon_inode:[eventpoll]`, files; to show which kinds a count of [`Process::open_fds`]
    /// gained or lost.
    pub fn fds(&self) -> Vec<String> {
        let dir = format!("/proc/{}/fd", self.child.id());
        let mut fds: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .collect();
        fds.sort();
        fds
    }

    /// Waits (up to `limit`) until the process has exactly `n` open file descriptors: those of
    /// connections that just ended may take a moment to be closed. What it has then.
    pub async fn settle_fds(&self, n: usize, limit: Duration) -> Vec<String> {
        let started = std::time::Instant::now();
        loop {
            if self.open_fds() == n || started.elapsed() >= limit {
                return self.fds();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces the config file (for a reload).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(self.config.as_ref().expect("started with a config"), toml).unwrap();
    }

    /// Sends the signal `name` (`TERM`, `HUP` …).
    pub fn signal(&self, name: &str) {
        let kill = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(kill.success(), "kill -{name}");
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits until the process exits.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
