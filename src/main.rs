//! The `shipper` binary: parse the command line, set up logging and the runtime, run, and map
//! errors to exit codes (0 clean stop, 64 bad usage or config, 1 runtime failure).

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use shipper::cli::{Cli, Command};
use shipper::config::{Config, FileConfig};
use shipper::consume::settings::Settings;
use shipper::{config, consume, pipeline, telemetry};

const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(settings) = consume_settings(&cli.command) {
        return run_consume(settings);
    }
    let config = match cli.command {
        Command::Consume(_) => unreachable!("handled by consume_settings"),
        Command::Tail(args) => Config::from_tail(args.paths, &args.options),
        Command::Run(args) => {
            FileConfig::load(&args.config).and_then(|file| Config::merge(file, &args.options))
        }
        Command::Validate(args) => {
            let printed = FileConfig::load(&args.config).and_then(|file| {
                if file.consume.is_some() {
                    Settings::from_file(file, &args.options).map(|s| toml::to_string_pretty(&s))
                } else {
                    Config::merge(file, &args.options).map(|c| toml::to_string_pretty(&c))
                }
            });
            return match printed {
                Ok(text) => match text {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: cannot print the settings: {error}");
                        ExitCode::FAILURE
                    }
                },
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
    };
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    telemetry::init(config.log_format);
    let workers = if config.has_socket_inputs() {
        worker_threads(config.concurrency)
    } else {
        FILES_WORKER_THREADS
    };
    let Some(runtime) = runtime(workers) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match pipeline::run(config, shutdown).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = %error, "shipper failed");
                eprintln!("error: {error}");
                if error.is_config() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    })
}

/// The consumer's settings when the command runs it: `consume`, or `run` with a [consume] table.
fn consume_settings(command: &Command) -> Option<Result<Settings, config::Error>> {
    match command {
        Command::Consume(args) => Some(Settings::from_options(&args.options)),
        Command::Run(args) => match FileConfig::load(&args.config) {
            Ok(file) if file.consume.is_some() => Some(Settings::from_file(file, &args.options)),
            _ => None,
        },
        _ => None,
    }
}

/// `shipper consume`: the same signals and exit codes as `tail`, on a runtime of up to four workers.
fn run_consume(settings: Result<Settings, config::Error>) -> ExitCode {
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    telemetry::init(settings.log_format);
    let Some(runtime) = runtime(worker_threads(4)) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match consume::run(settings, shutdown).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = %error, "shipper consume failed");
                eprintln!("error: {error}");
                if error.is_config() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    })
}

/// A signal repeated within this is taken as the same request (GNU `timeout` and some supervisors
/// send SIGTERM to the process and again to its process group).
const REPEAT_SIGNAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// The first SIGTERM or SIGINT starts a graceful stop; a second one (after REPEAT_SIGNAL_WINDOW)
/// exits at once: the checkpoint on disk still protects every undelivered line.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let mut first: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        match first {
            None => {
                tracing::info!("stop requested");
                first = Some(tokio::time::Instant::now());
                shutdown.cancel();
            }
            Some(at) if at.elapsed() < REPEAT_SIGNAL_WINDOW => {}
            Some(_) => {
                tracing::warn!("second stop signal: exiting at once");
                std::process::exit(1);
            }
        }
    }
}

/// `tail`'s runtime workers when every input is files: one. The file sources read and build records
/// on threads of their own, and checkpoints are written on the blocking pool; the runtime batches,
/// signs and sends, which one thread does at well over 100 MB/s (README, Performance). With a second
/// worker the scheduler woke the other thread for almost every request, at 7 to 15% more CPU per GB.
const FILES_WORKER_THREADS: usize = 1;

/// Runtime workers for socket inputs (which decode on the runtime) and the consumer: one per task
/// that keeps a CPU busy (a request in flight, a shard reader) at most, and never more than the
/// CPUs this process may use (cgroup quotas included), nor than 8. Tokio's default, one per CPU of
/// the host, would start dozens of idle threads on a large node.
fn worker_threads(tasks: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    cpus.min(tasks.max(2)).clamp(1, 8)
}

/// The async runtime with `workers` threads; `None` (said on stderr) when it cannot start.
fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            None
        }
    }
}

/// `pow`, from the `libm` crate instead of the C library's libm. Tokio's scheduler calls it every
/// time a worker goes idle (`f64::powf`, for its mean poll time) and the SDK's client-side rate
/// limiter (adaptive retries) calls it; nothing else in the process needs libm. With this
/// definition the binary no longer links `libm.so.6`, which the loader otherwise maps and relocates
/// in every process (about 0.5 MiB of resident memory for this one function).
/// `tests/binary_layout.rs` checks the library is not needed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn pow_takes_the_base_then_the_exponent() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(10.0, -2.0), 0.01);
        // What tokio computes: the weight left to the old mean after n polls.
        assert!((super::pow(0.9, 3.0) - 0.729).abs() < 1e-15);
        // `f64::powf` agrees (in this binary it calls the definition above).
        assert_eq!(std::hint::black_box(3.0f64).powf(4.0), 81.0);
        assert!(super::pow(-1.0, 0.5).is_nan());
    }
}
