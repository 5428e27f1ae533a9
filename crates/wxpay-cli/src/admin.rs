//! `wxpay admin`: named admin API tokens in the database the config names, and new webhook
//! secrets.
//!
//! `token add NAME` prints the new token once (only its SHA-256 is stored: a lost token is
//! revoked and replaced, never recovered); `token list` shows names and creation times;
//! `token revoke NAME` deletes it, and the next request carrying it is refused.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::Engine;
use clap::Subcommand;
use rand::RngCore;
use wxpay_server::api::auth;
use wxpay_server::config::Config;
use wxpay_server::domain::{name_of, parse_name, Role};
use wxpay_server::store::StoreError;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Named admin API tokens (Authorization: Bearer TOKEN on /admin/...).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Prints a new Standard Webhooks signing secret (`whsec_` + 32 random bytes in base64) for
    /// `webhook.secret`.
    WebhookSecret,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Creates a token named NAME (who acted, in the audit log) and prints it once.
    Add {
        name: String,
        /// owner (everything), operator (orders, shipping, refunds), viewer (reads only) or
        /// till (a Native mode-1 till's /till/api only).
        #[arg(long, default_value = "owner", value_parser = ["owner", "operator", "viewer", "till"])]
        role: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Lists the token names, their roles and when they were created.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Revokes the token named NAME: requests carrying it are refused from now on.
    Revoke {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub async fn run(command: AdminCommand) -> anyhow::Result<ExitCode> {
    let command = match command {
        AdminCommand::Token { command } => command,
        AdminCommand::WebhookSecret => {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            println!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
            return Ok(ExitCode::SUCCESS);
        }
    };
    let config_path = match &command {
        TokenCommand::Add { config, .. } | TokenCommand::List { config } | TokenCommand::Revoke { config, .. } => {
            config.clone()
        }
    };
    let config = Config::load(config_path.as_deref())?;
    let store = wxpay_server::app::open_store(&config)
        .await
        .with_context(|| format!("opening {}", wxpay_server::config::redacted_url(&config.database.url)))?;
    let now = chrono::Utc::now();
    match command {
        TokenCommand::Add { name, role, .. } => {
            auth::check_token_name(&name).map_err(anyhow::Error::msg)?;
            let role: Role = parse_name("--role", &role)?;
            let token = auth::new_admin_token();
            match store.add_admin_token(&name, role, &auth::token_sha256(&token), now).await {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => {
                    bail!("an admin token named {name:?} exists; revoke it first (`wxpay admin token revoke {name}`) or pick another name")
                }
                Err(e) => return Err(e.into()),
            }
            println!("{token}");
            eprintln!(
                "admin token {name:?} ({}) created; it is shown only this once: keep it in a password manager",
                name_of(&role)
            );
        }
        TokenCommand::List { .. } => {
            let tokens = store.list_admin_tokens().await?;
            if tokens.is_empty() {
                eprintln!("no named admin tokens; create one with `wxpay admin token add NAME`");
            }
            for t in tokens {
                println!("{}\t{}\t{}", t.name, name_of(&t.role), wxpay_server::domain::api_time(t.created_at));
            }
        }
        TokenCommand::Revoke { name, .. } => {
            if !store.revoke_admin_token(&name).await? {
                let known: Vec<String> = store.list_admin_tokens().await?.into_iter().map(|t| t.name).collect();
                bail!(
                    "no admin token named {name:?}; the tokens are: {}",
                    if known.is_empty() { "(none)".to_owned() } else { known.join(", ") }
                );
            }
            eprintln!("admin token {name:?} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
