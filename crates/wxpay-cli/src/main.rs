//! The `wxpay` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod debug;

#[derive(Parser)]
#[command(name = "wxpay", version, about = "Self-hosted WeChat Pay v2 merchant backend, simulator and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sign { key, sign_type, fields } => debug::sign(&key, &sign_type, &fields),
        Command::Verify { key, file } => debug::verify(&key, file.as_deref()),
    }
}
