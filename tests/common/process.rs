//! The real `airbag` binary as a child process: started, its announcement line awaited,
//! killed when the test ends (or on purpose, as a crash).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const AIRBAG: &str = env!("CARGO_BIN_EXE_airbag");

/// Kills the child (SIGKILL) when dropped, even on a failed assertion.
pub struct Running(pub Child);

impl Running {
    /// SIGKILL now: no shutdown, no flush, exactly like a crash.
    pub fn crash(mut self) {
        self.0.kill().expect("the child is killed");
        self.0.wait().expect("the child is reaped");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the binary with `args` (listening on port 0) and wait for the log line that
/// announces its addresses; returns the child and that line. The child's output keeps
/// being drained so it never blocks on a full pipe.
pub fn spawn_announced(args: &[&str], announcement: &str) -> (Running, String) {
    let (running, line, _rest) = spawn_logging(args, announcement);
    (running, line)
}

/// [`spawn_announced`], also returning the log lines that come after the announcement.
pub fn spawn_logging(
    args: &[&str],
    announcement: &str,
) -> (Running, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(AIRBAG)
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("airbag starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(line) = received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(announcement) {
            return (running, line, received);
        }
    }
    panic!("`{announcement}` was never logged by airbag {args:?}");
}

/// The value of `name=` in a log line.
pub fn field(line: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        .to_string()
}
