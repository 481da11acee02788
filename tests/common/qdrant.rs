//! A real Qdrant server for the shared-store tests: `QDRANT_URL` when set (any server),
//! else the test tooling's `../shared/bin/qdrant` started on free loopback ports with a
//! storage folder of its own (stopped when the test ends); None when neither is at hand,
//! and the test says it was skipped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Qdrant to test against; stops the one it started when dropped.
pub struct Qdrant {
    /// The gRPC URL the `qdrant` store connects to.
    pub url: String,
    started: Option<(Child, tempfile::TempDir)>,
    /// The HTTP and gRPC ports of the one it started, to start it again on them.
    ports: (u16, u16),
}

impl Drop for Qdrant {
    fn drop(&mut self) {
        if let Some((child, _storage)) = &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Qdrant {
    /// Its process id, when this test started it (to freeze or kill it on purpose).
    pub fn pid(&self) -> Option<u32> {
        self.started.as_ref().map(|(child, _)| child.id())
    }

    /// SIGKILL the server this test started, then start it again on the same ports and
    /// storage, and wait until it is ready.
    pub async fn crash_and_restart(&mut self, down_for: Duration) {
        let (child, storage) = self.started.as_mut().expect("a server this test started");
        child.kill().expect("the server is killed");
        child.wait().expect("the server is reaped");
        tokio::time::sleep(down_for).await;
        *child = spawn(storage.path(), self.ports);
        wait_ready(self.ports.0).await;
    }
}

fn spawn(storage: &std::path::Path, (http, grpc): (u16, u16)) -> Child {
    Command::new(tooling_binary().expect("the tooling's Qdrant"))
        .current_dir(storage)
        .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
        .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
        .env("QDRANT__SERVICE__HOST", "127.0.0.1")
        .env("QDRANT__STORAGE__STORAGE_PATH", storage.join("storage"))
        .env("QDRANT__STORAGE__SNAPSHOTS_PATH", storage.join("snapshots"))
        .env("QDRANT__TELEMETRY_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the Qdrant server starts")
}

async fn wait_ready(http: u16) {
    let ready = format!("http://127.0.0.1:{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(&ready).await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the Qdrant server was not ready at {ready} within 60 s");
}

/// The test tooling's Qdrant binary, when this checkout has one beside it.
fn tooling_binary() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bin/qdrant");
    path.is_file().then_some(path)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A Qdrant for `test`, or None after printing why the test is skipped.
pub async fn qdrant(test: &str) -> Option<Qdrant> {
    if let Ok(url) = std::env::var("QDRANT_URL") {
        return Some(Qdrant {
            url,
            started: None,
            ports: (0, 0),
        });
    }
    if tooling_binary().is_none() {
        println!(
            "SKIPPED {test}: no Qdrant server (../shared/bin/qdrant is absent and QDRANT_URL is not set)"
        );
        return None;
    }
    let storage = tempfile::tempdir().expect("a storage folder");
    let ports = (free_port(), free_port());
    let child = spawn(storage.path(), ports);
    let server = Qdrant {
        url: format!("http://127.0.0.1:{}", ports.1),
        started: Some((child, storage)),
        ports,
    };
    wait_ready(ports.0).await;
    Some(server)
}
