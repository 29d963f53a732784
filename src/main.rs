//! The binary: parse the CLI, load and validate the config before binding anything,
//! then run. Exit 64 (EX_USAGE) on a bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use auth_sidecar::config::{Config, ProcessEnv};

mod demo;

#[derive(Parser)]
#[command(
    name = "auth-sidecar",
    version,
    about = "Token-lifecycle reverse proxy for chat backends"
)]
struct Cli {
    /// Config file (TOML). Keys can be overridden with AUTH_SIDECAR__<SECTION>__<KEY>.
    #[arg(
        long,
        short,
        global = true,
        default_value = "config.toml",
        env = "AUTH_SIDECAR_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config, print it with secrets redacted, exit non-zero on problems.
    CheckConfig,
    /// DEV ONLY: run the proxy with a built-in echo backend and dev token service, and
    /// print curl commands that walk through the whole token lifecycle.
    Demo,
    /// DEV ONLY: mint an HS256 access token with the config's HMAC secret.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 60s, 15m, 1h.
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
}

const EX_USAGE: u8 = 64;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => check_config(&cli.config),
        Command::Run => run(cli.config),
        Command::Demo => demo(&cli.config),
        Command::Token {
            sub,
            email,
            name,
            ttl,
        } => {
            let ttl = match auth_sidecar::config::parse_duration(&ttl) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("--ttl: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            match demo::token_command(&cli.config, &sub, email.as_deref(), name.as_deref(), ttl) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match auth_sidecar::check_config(path) {
        Ok(cfg) => {
            println!("# effective configuration (secrets are shown as references only)");
            print!("{}", cfg.redacted_toml());
            eprintln!("config ok: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!(
                "invalid configuration {} ({} problem(s)):",
                path.display(),
                problems.len()
            );
            for p in problems {
                eprintln!("  - {p}");
            }
            ExitCode::from(EX_USAGE)
        }
    }
}

fn demo(path: &std::path::Path) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo::run_demo(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auth-sidecar demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let cfg = match Config::load(&path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    auth_sidecar::telemetry::init(&cfg.log);
    // The main thread's runtime runs the control plane (admin, reload, JWKS and other
    // background work) and, with `worker_threads = 1`, the proxy too; more workers get a
    // thread and a runtime each (`listen::Workers`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(auth_sidecar::run(cfg, Some(path))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("auth-sidecar: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}
