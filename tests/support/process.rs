//! The built `sluice` binary as a process of its own, configured from a file, with its log
//! kept for the test to read. Killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{free_port, wait_for_listener};

pub struct Process {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Process {
    /// `sluice --config FILE` (FILE holding `toml`), on free loopback ports, one worker, with
    /// the extra environment variables `env`; returns once it listens.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Process {
        let (port, admin) = (free_port(), free_port());
        let name = format!("sluice-test-{}-{port}", std::process::id());
        let config = std::env::temp_dir().join(format!("{name}.toml"));
        let log = std::env::temp_dir().join(format!("{name}.log"));
        std::fs::write(&config, toml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--workers", "1"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for_listener(addr).await;
        Process {
            addr,
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            child,
            config,
            log,
        }
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the config file (for a reload).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}
