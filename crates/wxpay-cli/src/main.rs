//! The `wxpay` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod admin;
mod backup;
mod bench;
mod debug;
mod demo;
mod products;
mod qr;
mod reconcile;
mod refund;
mod run;

#[derive(Parser)]
#[command(name = "wxpay", version, about = "Self-hosted WeChat Pay v2 merchant backend, simulator and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum QrFormat {
    Text,
    Png,
    Svg,
}

#[derive(Subcommand)]
enum Command {
    /// The merchant backend. With no config: sandbox mode (SQLite at ./data/wxpay.db, in-memory
    /// cache, the WeChat simulator embedded on 127.0.0.1:8090, a demo catalogue).
    /// A configuration that cannot work (e.g. sandbox credentials with the simulator off) is
    /// refused with exit code 78, naming the key and where it was set.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Validate the configuration and print the effective settings (secrets redacted), then
        /// exit without starting anything.
        #[arg(long)]
        check: bool,
    },
    /// The WeChat-side simulator alone.
    Sim {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Default: `[simulator] listen` of the config, else 127.0.0.1:8090.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// The catalogue in the database the configuration names: list, add, change, retire.
    /// Every change is recorded in the audit log (actor `cli:$USER`).
    Products {
        #[command(subcommand)]
        command: products::ProductsCommand,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Runs both flows end to end (mini-program and Native mode 1) against an in-process
    /// simulator and server; exits 0 only if both orders end PAID and fulfilled.
    Demo,
    /// Print the v2 signature of NAME=VALUE fields (canonical string on stderr).
    Sign {
        /// The merchant API key (API密钥, 32 characters).
        #[arg(long, env = "WXPAY_API_KEY", hide_env_values = true)]
        key: String,
        /// MD5 (default) or HMAC-SHA256.
        #[arg(long, default_value = "MD5")]
        sign_type: String,
        /// Fields to sign, e.g. appid=wx... mch_id=... (a `sign=` field is ignored).
        #[arg(value_name = "NAME=VALUE", required = true)]
        fields: Vec<String>,
    },
    /// Check the `sign` of a WeChat XML message (file or stdin); explain why when it fails.
    Verify {
        #[arg(long, env = "WXPAY_API_KEY", hide_env_values = true)]
        key: String,
        /// Read the message from this file instead of stdin.
        file: Option<PathBuf>,
    },
    /// The Native mode-1 link, or its QR image, for a catalogue product.
    Qr {
        #[arg(long)]
        product: String,
        #[arg(long, value_enum, default_value = "text")]
        format: QrFormat,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image size in pixels (PNG/SVG).
        #[arg(long)]
        size: Option<u32>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A consistent online copy of the SQLite store (while the server runs): `VACUUM INTO` a new
    /// file, checked with `PRAGMA integrity_check`. PostgreSQL: use pg_dump (see the README).
    Backup {
        /// The backup file to create (must not exist yet).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// The server's configuration (its `database.url` names the store).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Reconcile (对账) one Beijing day's trade bill with the orders and refunds, as the daily job
    /// does (exit 75: the bill is not there yet, try again later).
    Reconcile {
        /// The day, YYYY-MM-DD (Beijing time), within the last 3 months, before today.
        #[arg(long)]
        date: String,
        /// The server's configuration (database and merchant).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Refund (申请退款) part or all of a paid order through a running server's admin API.
    Refund {
        /// The order number (out_trade_no).
        order_no: String,
        /// How much, in fen (1250 = ¥12.50).
        #[arg(long)]
        amount: String,
        /// Why (shown to the user by WeChat; at most 80 characters).
        #[arg(long)]
        reason: String,
        /// Your own refund number (default: the server makes one).
        #[arg(long)]
        out_refund_no: Option<String>,
        /// Repeat the key of an earlier call to retry it without refunding twice (default: new).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The admin token (`server.admin_token`, printed at start in sandbox mode).
        #[arg(long, env = "WXPAY_ADMIN_TOKEN", hide_env_values = true, default_value = "")]
        token: String,
    },
    /// Load generator: runs virtual users through whole flows (mini-program, Native, a storm of
    /// duplicate notifications) and checks that every payment was applied exactly once.
    Bench(bench::BenchArgs),
    /// Administration: named admin API tokens (`wxpay admin token add|list|revoke`), new
    /// webhook secrets (`wxpay admin webhook-secret`).
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sign { key, sign_type, fields } => debug::sign(&key, &sign_type, &fields),
        Command::Verify { key, file } => debug::verify(&key, file.as_deref()),
        Command::Serve { config, check: true } => run::block_on(run::check(config)),
        Command::Serve { config, check: false } => run::block_on(run::serve(config)),
        Command::Products { command, config } => run::block_on(products::run(config, command)),
        Command::Sim { config, listen } => run::block_on(run::sim(config, listen)),
        Command::Demo => run::block_on(demo::run()),
        Command::Qr { product, format, out, size, config } => {
            run::block_on(qr::run(config, product, format, out, size))
        }
        Command::Bench(args) => run::block_on(bench::run(args)),
        Command::Refund { order_no, amount, reason, out_refund_no, idempotency_key, server, token } => {
            run::block_on(refund::run(refund::RefundArgs {
                order_no,
                amount,
                reason,
                out_refund_no,
                idempotency_key,
                server,
                token,
            }))
        }
        Command::Backup { to, config } => run::block_on(backup::run(config, to)),
        Command::Reconcile { date, config } => run::block_on(reconcile::run(config, date)),
        Command::Admin { command } => run::block_on(admin::run(command)),
    }
}
