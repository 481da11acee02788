//! The `airbag` binary: parses the command line, loads and validates the config, starts
//! logging and hands over to the library. Nothing here is needed by tests.

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use airbag::config::{Config, Env, LogFormat};
use airbag::mock::cloud::CloudAuth;
use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airbag",
    version,
    about = "Keeps chat apps answering when LLM providers fail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/airbag.toml")]
        config: PathBuf,
    },
    /// Load and validate a config, report every problem, and exit.
    CheckConfig {
        #[arg(long, default_value = "config/airbag.toml")]
        config: PathBuf,
    },
    /// Run a fake OpenAI- and Anthropic-compatible provider with fault injection.
    MockProvider(MockArgs),
    /// Rehearse an outage: traffic before and while a target fails, and a verdict.
    Drill(DrillArgs),
}

#[derive(clap::Args)]
struct DrillArgs {
    /// The gateway's proxy listener.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    admin: String,
    /// The target to make fail, `provider/model`.
    #[arg(long)]
    target: String,
    /// How the target fails: `breaker_open` (skipped without a call), or a fault in its
    /// real attempts: `hang`, `status:503`, `broken_key`, `latency:5s`, `error_rate:0.3`.
    #[arg(long, default_value = "breaker_open")]
    fault: airbag::drill::DrillFault,
    /// The target's first-byte timeout, which a failover must beat; read from the
    /// gateway's /admin/status when not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    first_byte_timeout: Option<Duration>,
    /// The p95 latency the traffic must stay under while the target fails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    slo_p95: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The route (model name) the traffic asks for.
    #[arg(long, default_value = "chat")]
    model: String,
    /// Requests per second. Real providers bill drill traffic: keep it small.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    before: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    during: Duration,
    /// The environment variable holding the admin token, if the gateway has one.
    #[arg(long, default_value = "AIRBAG_ADMIN_TOKEN")]
    admin_token_env: String,
    /// The environment variable holding a gateway client key, if the gateway has them.
    #[arg(long, default_value = "AIRBAG_CLIENT_KEY")]
    client_key_env: String,
}

#[derive(clap::Args)]
struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Shown in answers, to tell several mocks apart.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Only these API keys are accepted (repeatable); others get 401.
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Pause between stream events.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    chunk_delay: Duration,
    /// Answer this status with probability --fail-rate.
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Answer 429 with probability --rate-limit-rate, with `retry-after: --retry-after`.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    #[arg(long, default_value_t = 1.0)]
    retry_after: f64,
    /// Wait this long before every response head.
    #[arg(long, value_parser = humantime::parse_duration)]
    first_byte_delay: Option<Duration>,
    /// Stall streams after --stall-after events, with this probability.
    #[arg(long, default_value_t = 0.0)]
    stall_rate: f64,
    #[arg(long, default_value_t = 3)]
    stall_after: usize,
    /// Never answer, with this probability.
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// Break the connection mid-response, with this probability.
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Answer 200 with broken JSON, with this probability.
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,
    /// Bedrock: accept requests SigV4-signed with this `ACCESS_KEY_ID:SECRET` (repeatable);
    /// a signature that does not check out gets AWS's 403.
    #[arg(long = "aws-key")]
    aws_keys: Vec<String>,
    /// Vertex: a service account's JSON key file; `POST /token` then mints tokens for
    /// assertions it signed, and the Vertex routes accept only those tokens.
    #[arg(long)]
    service_account: Option<PathBuf>,
    /// How long a minted Vertex token lives.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    token_lifetime: Duration,
}

impl MockArgs {
    /// The cloud credentials the mock checks, or what is wrong with the flags.
    fn cloud(&self) -> Result<CloudAuth, String> {
        let mut aws = std::collections::HashMap::new();
        for pair in &self.aws_keys {
            let (id, secret) = pair
                .split_once(':')
                .ok_or_else(|| format!("--aws-key `{pair}`: write ACCESS_KEY_ID:SECRET"))?;
            aws.insert(id.to_string(), secret.to_string());
        }
        let service_account = match &self.service_account {
            Some(path) => {
                let json = std::fs::read_to_string(path)
                    .map_err(|error| format!("--service-account {}: {error}", path.display()))?;
                let source = format!("--service-account {}", path.display());
                Some(std::sync::Arc::new(
                    airbag::providers::surface::vertex::token::ServiceAccount::from_json(
                        &json, &source,
                    )?,
                ))
            }
            None => None,
        };
        Ok(CloudAuth {
            aws,
            service_account,
            token_lifetime: self.token_lifetime,
        })
    }

    /// Each flag becomes a rule; rules are tried in this order.
    fn rules(&self) -> Vec<FaultRule> {
        let candidates = [
            (self.hang_rate, Fault::Hang),
            (self.reset_rate, Fault::Reset),
            (self.malformed_rate, Fault::Malformed),
            (
                self.stall_rate,
                Fault::StallAfter {
                    chunks: self.stall_after,
                },
            ),
            (
                self.rate_limit_rate,
                Fault::Status {
                    status: 429,
                    retry_after: Some(self.retry_after),
                    body: None,
                },
            ),
            (
                self.fail_rate,
                Fault::Status {
                    status: self.fail_status,
                    retry_after: None,
                    body: None,
                },
            ),
        ];
        let mut rules: Vec<FaultRule> = candidates
            .into_iter()
            .filter(|(rate, _)| *rate > 0.0)
            .map(|(rate, fault)| FaultRule {
                probability: rate.min(1.0),
                ..FaultRule::always(fault)
            })
            .collect();
        if let Some(delay) = self.first_byte_delay {
            rules.push(FaultRule::always(Fault::Delay {
                ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            }));
        }
        rules
    }
}

/// Command output on stdout. A closed stdout (`airbag check-config | head`) is not an
/// error: the rest of the output is dropped quietly, and the exit status still says what
/// the command found.
#[derive(Default)]
struct Stdout {
    closed: bool,
}

impl Stdout {
    fn line(&mut self, text: impl Display) {
        if self.closed {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        // Any write error (a broken pipe above all) means nobody reads on: stop writing.
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            self.closed = true;
        }
    }
}

/// A line on stderr; a closed stderr is ignored like a closed stdout.
fn error_line(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Logs go to stdout through a background writer, so a slow terminal or a full pipe
/// never blocks a request; when its buffer is full, lines are dropped instead. The
/// writer takes every line waiting and writes them with one call (stdout alone would
/// make a call per line), then flushes. The returned guard flushes what is left when
/// `main` ends. `log.format = "json"` writes
/// one JSON object per line with the same fields (the request span's included).
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    const LOG_BUFFER: usize = 64 * 1024;
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        LOG_BUFFER,
        std::io::stdout(),
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    guard
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn check_config(path: &Path) -> ExitCode {
    let env = Env::from_process();
    let mut out = Stdout::default();
    match Config::load(path, &env) {
        Ok(config) => {
            out.line(format_args!("{}: ok", path.display()));
            for (name, provider) in &config.providers {
                let (set, configured) =
                    airbag::providers::surface::credential_state(provider, &env);
                let what = airbag::providers::surface::credential_noun(provider);
                let state = match what {
                    _ if configured == 0 || set == configured => "enabled".to_string(),
                    "keys" if set > 0 => "enabled".to_string(),
                    "keys" => "disabled: none of its keys are set in the environment".to_string(),
                    _ => format!("disabled: not all of its {what} are set in the environment"),
                };
                out.line(format_args!(
                    "  provider {name} ({:?}): {set}/{configured} {what} set, {state}",
                    provider.kind,
                ));
            }
            for route in &config.routes {
                let tiers: Vec<String> = route.chain.iter().map(ToString::to_string).collect();
                out.line(format_args!(
                    "  route {} -> {}",
                    route.model,
                    tiers.join(" -> ")
                ));
            }
            check_canned(&config.canned.dir, &mut out)
        }
        Err(error) => {
            error_line(format_args!("{error}"));
            ExitCode::FAILURE
        }
    }
}

/// The canned folder as `serve` would load it: a missing folder or a file that would be
/// skipped fails the check, so CI catches a bad edit before it is deployed.
fn check_canned(dir: &Path, out: &mut Stdout) -> ExitCode {
    let snapshot = match airbag::canned::files::check_folder(dir) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            error_line(format_args!(
                "canned.dir: cannot read the folder {}: {error}; create it (an empty folder is fine) or point canned.dir at the folder of canned answers",
                dir.display()
            ));
            return ExitCode::FAILURE;
        }
    };
    let ids: Vec<&str> = snapshot
        .entries
        .iter()
        .map(|entry| entry.id.as_str())
        .collect();
    out.line(format_args!(
        "  canned {}: {}",
        dir.display(),
        ids.join(", ")
    ));
    for (file, problem) in &snapshot.problems {
        error_line(format_args!("{}: {problem}", dir.join(file).display()));
    }
    if snapshot.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// glibc keeps memory freed below the top of its heaps, and raises the size at which it
/// maps large blocks on their own each time one is freed: after the model loads (ONNX
/// Runtime builds and frees tens of MB while optimising the graph) about 55 MB stay
/// resident that nothing uses. A fixed trim threshold (which also keeps the mapping
/// threshold at 128 KiB) gives them back: 225 MB resident at start becomes 169 MB
/// (`bench/results/soak.json`). Tunables are read only when a process starts, so `serve`
/// runs itself again with them, once, as the same process (exec keeps the pid). An
/// operator's own `GLIBC_TUNABLES` is left alone.
fn return_freed_memory_to_the_os() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(executable) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only when it failed; airbag then runs with glibc's defaults.
    let _failed = std::process::Command::new(executable)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
        .exec();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => {
            return_freed_memory_to_the_os();
            let env = Env::from_process();
            let config = match Config::load(&config, &env) {
                Ok(config) => config,
                Err(error) => {
                    error_line(format_args!("{error}"));
                    return ExitCode::FAILURE;
                }
            };
            let _log_guard = init_logging(config.log.format);
            match airbag::server::run(&config, &env, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    error_line(format_args!("airbag could not start: {error}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Drill(args) => {
            let env = Env::from_process();
            let plan = airbag::drill::DrillPlan {
                gateway: args.gateway,
                admin: args.admin,
                admin_token: env.get(&args.admin_token_env).map(str::to_string),
                client_key: env.get(&args.client_key_env).map(str::to_string),
                model: args.model,
                target: args.target,
                fault: args.fault,
                rate: args.rate,
                before: args.before,
                during: args.during,
                first_byte_timeout: args.first_byte_timeout,
                slo_p95: args.slo_p95,
            };
            match airbag::drill::run(&plan).await {
                Ok(report) => {
                    let mut out = Stdout::default();
                    if args.json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(json) => out.line(json),
                            Err(error) => {
                                error_line(format_args!("cannot write the report as JSON: {error}"))
                            }
                        }
                    } else {
                        out.line(report.render());
                    }
                    if report.passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    error_line(format_args!("drill failed: {error}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::MockProvider(args) => {
            let _log_guard = init_logging(LogFormat::Text);
            let cloud = match args.cloud() {
                Ok(cloud) => cloud,
                Err(message) => {
                    error_line(format_args!("{message}"));
                    return ExitCode::FAILURE;
                }
            };
            let options = MockOptions {
                name: args.name.clone(),
                chunk_delay: args.chunk_delay,
                valid_keys: (!args.keys.is_empty()).then(|| args.keys.clone()),
                cloud,
                ..MockOptions::default()
            };
            let mock = match MockProvider::start(args.listen, options, args.rules()).await {
                Ok(mock) => mock,
                Err(error) => {
                    error_line(format_args!(
                        "mock provider cannot listen on {}: {error}",
                        args.listen
                    ));
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(base_url = %mock.base_url(), "mock provider ready");
            shutdown_signal().await;
            mock.stop().await;
            ExitCode::SUCCESS
        }
    }
}
