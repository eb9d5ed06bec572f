//! The `sluice` binary: parse flags, set up logging, load the config, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{self, Args, Command, LogFormat};
use sluice::config::{Config, Overrides};
use sluice::{demo, server, telemetry};

/// mimalloc's per-thread heaps suit a thread-per-core server: about a sixth of a proxied
/// request's user-space time was in the system allocator (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: sluice::alloc::Allocator = sluice::alloc::Allocator;

fn main() -> ExitCode {
    let args = Args::parse();
    // Before the config is checked, as `max_connections` must fit the limit.
    let raised = sluice::fds::raise();
    // The config is read before logging is set up: its `[telemetry]` adds the trace layer.
    let config = args.command.is_none().then(|| args.load_config());
    let telemetry = match &config {
        Some(Ok(config)) => telemetry::start(&config.telemetry),
        _ => Ok(None),
    };
    let (traces, layer) = match telemetry {
        Ok(Some((traces, layer))) => (Ok(Some(traces)), Some(layer)),
        Ok(None) => (Ok(None), None),
        Err(e) => (Err(e), None),
    };
    cli::init_tracing(&args.log, args.log_format, layer);
    if let Err(e) = raised {
        tracing::warn!(error = %e, "could not raise the open file limit to its hard limit");
    }
    match (&args.command, config) {
        (None, Some(Ok(config))) => match traces {
            Ok(traces) => serve(config, args.source(), args.log_format, traces),
            Err(e) => fatal(args.log_format, &format!("cannot start traces: {e}")),
        },
        (None, Some(Err(e))) => config_error(args.log_format, &e),
        (None, None) => unreachable!("the config is read for the proxy"),
        (Some(command), _) => run(&args, command),
    }
}

/// A subcommand other than the proxy itself.
fn run(args: &Args, command: &Command) -> ExitCode {
    match command {
        Command::Check => match args.load_config() {
            Ok(config) => {
                say(&format!("{}config OK\n", config.summary()));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(LogFormat::Text, &e),
        },
        Command::HashKey => match cli::hash_key(std::io::stdin()) {
            Ok(hex) => {
                say(&format!("{hex}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Demo => demo(args),
        Command::Healthcheck { url } => {
            let url = match (url, args.load_config()) {
                (Some(url), _) => url.clone(),
                (None, Ok(Config { server: s, .. })) if s.admin_listen.is_some() => {
                    cli::health_url(s.admin_listen.unwrap())
                }
                (None, Ok(_)) => return fail("the admin listener is off; pass --url"),
                (None, Err(e)) => return config_error(LogFormat::Text, &e),
            };
            cli::probe(&url).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
        }
    }
}

fn demo(args: &Args) -> ExitCode {
    let api = match demo::spawn_api() {
        Ok(addr) => addr,
        Err(e) => return fatal(args.log_format, &format!("cannot start the demo API: {e}")),
    };
    let overrides = Overrides {
        listen: Some(
            args.listen
                .clone()
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
        ),
        upstreams: vec![format!("http://{api}")],
        ..args.overrides()
    };
    let config = match args.load_with(&overrides) {
        Ok(c) => c,
        Err(e) => return config_error(args.log_format, &e),
    };
    say(&format!(
        "sluice demo: proxy on http://{} in front of a demo API on http://{api}\ntry:\n{}\n\n",
        config.server.listen,
        demo::curl_lines(config.server.listen, config.server.tls.is_some())
    ));
    let source = args
        .config
        .clone()
        .map(|path| server::Source { path, overrides });
    serve(config, source, args.log_format, None)
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and exits 0. SIGHUP reloads the config.
fn serve(
    config: Config,
    source: Option<server::Source>,
    log: LogFormat,
    traces: Option<telemetry::Traces>,
) -> ExitCode {
    let options = server::Options {
        source,
        ..server::Options::default()
    };
    let running = match server::start_with(config, options) {
        Ok(r) => r,
        Err(e) => return fatal(log, &e.to_string()),
    };
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match signals {
        Ok(rt) => rt,
        Err(e) => return fatal(log, &format!("cannot wait for signals: {e}")),
    };
    rt.block_on(cli::until_shutdown(|| {
        let _ = running.reload(); // logged and counted either way
    }));
    tracing::info!("shutting down: draining in-flight requests (a second signal stops at once)");
    // Waiting out a long drain is the operator's choice: a second SIGTERM or Ctrl-C cuts it.
    // Not within a second of the first: one Ctrl-C can arrive twice, from the terminal and
    // from a wrapper that passes it on.
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            cli::until_shutdown(|| {}).await;
        });
        tracing::warn!("second signal: stopping without waiting for the drain");
        std::process::exit(1);
    });
    running.shutdown();
    running.join();
    if let Some(traces) = traces {
        traces.shutdown();
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Writes to standard output. A reader that stopped early (`sluice check | head -1`) is no
/// reason to fail, nor to panic as `println!` does.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// A config that does not validate; plain text for a person (`check`), else as `fatal`.
fn config_error(log: LogFormat, e: &sluice::config::ConfigError) -> ExitCode {
    fatal(log, &format!("invalid config:\n{e}"))
}

/// Why the server could not start. With JSON logs it is a log line like any other, so that a
/// log pipeline sees it; a filter that drops errors does not silence it.
fn fatal(log: LogFormat, msg: &str) -> ExitCode {
    if log == LogFormat::Json && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{msg}");
        return ExitCode::FAILURE;
    }
    fail(msg)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("sluice: {msg}");
    ExitCode::FAILURE
}
