//! `wxpay serve` and `wxpay sim`: long-running processes that stop gracefully on Ctrl-C/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use wxpay_proto::clock::{Clock, SystemClock};
use wxpay_server::config::{Config, ConfigError, EnvRule, LogFormat, Origin};

/// Log lines on stderr: text for a person, or (`log.format = "json"`) one JSON object per line
/// with the request span's fields (request id, method, path) on each.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

/// The exit code of a configuration that cannot be used (`EX_CONFIG` of sysexits.h: a service
/// manager can tell it from a crash and need not restart).
pub const EXIT_CONFIG: u8 = 78;

/// Runs an async command on a multi-threaded runtime; errors are printed once, exit code 1
/// ([`EXIT_CONFIG`] for a configuration error).
pub fn block_on(fut: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each said once: many errors already repeat their cause in their own
/// message, which a plain `{:#}` would print again.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The embedded simulator's time (the wall clock moved by `POST /sim/clock`).
struct SandboxClock(Arc<wxpay_sim::Simulator>);

impl Clock for SandboxClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.now()
    }
}

/// The simulator configuration matching a server config's merchant and callback URL.
pub fn embedded_sim_config(config: &Config) -> wxpay_sim::SimConfig {
    let mut sim = wxpay_sim::SimConfig { time_scale: config.simulator.time_scale, ..wxpay_sim::SimConfig::default() };
    sim.sandbox_merchant = false;
    let mut merchant = wxpay_sim::MerchantConfig::sandbox();
    merchant.appid = config.wechat.appid.clone();
    merchant.mch_id = config.wechat.mch_id.clone();
    merchant.api_key = config.wechat.api_key.expose().to_owned();
    merchant.app_secret = config.wechat.app_secret.expose().to_owned();
    merchant.scan_callback_url = Some(config.scan_callback_url());
    merchant.refund_notify_url = Some(config.refund_notify_url());
    sim.merchants = vec![merchant];
    sim
}

/// The configuration `wxpay serve` runs with: loaded, validated, and in sandbox mode with
/// notify_url following the listen address when only that was changed.
fn serve_config(config_path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let mut config = Config::load(config_path)?;
    if config.wechat_is_simulated()
        && config.server.public_url == wxpay_server::config::ServerConfig::default().public_url
        && config.server.listen != wxpay_server::config::ServerConfig::default().listen
    {
        config.server.public_url = format!("http://{}", config.server.listen);
    }
    Ok(config)
}

/// `wxpay serve --check`: validates the configuration and prints the effective settings.
pub async fn check(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = serve_config(config_path.as_deref())?;
    let source = config_path.as_ref().map_or("no file, defaults".to_owned(), |p| p.display().to_string());
    println!("# configuration OK ({source}, then WXPAY_<SECTION>__<KEY> variables)");
    if config.wechat_is_simulated() {
        let simulator = if config.simulator.enabled {
            format!("the embedded simulator on {}", config.simulator.listen)
        } else {
            format!("the simulator at {}", config.wechat.pay_base_url)
        };
        println!(
            "# sandbox mode: WeChat is simulated by {simulator} (demo catalogue: {})",
            config.orders.seed_demo_catalogue
        );
    } else {
        println!("# production: talking to WeChat at {}", config.wechat.pay_base_url);
    }
    println!("# notify_url        = {}", config.notify_url());
    println!("# scan callback URL = {}", config.scan_callback_url());
    println!();
    print!("{}", config.effective_toml());
    Ok(ExitCode::SUCCESS)
}

pub async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut config = serve_config(config_path.as_deref())?;
    init_tracing(config.log.format);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    // A public_url that follows the listen address follows the bound one (port 0 included), so
    // that notify_url and the scan callback reach us.
    if config.server.public_url == format!("http://{}", config.server.listen) {
        config.server.public_url = format!("http://{}", listener.local_addr()?);
    }
    let sim = if config.simulator.enabled {
        let sim = wxpay_sim::start(embedded_sim_config(&config), Arc::new(SystemClock), config.simulator.listen)
            .await
            .with_context(|| {
                format!("cannot start the embedded simulator on {} (simulator.listen)", config.simulator.listen)
            })?;
        config.wechat.pay_base_url = sim.base_url();
        config.wechat.sns_base_url = sim.base_url();
        Some(sim)
    } else {
        None
    };
    // In sandbox mode the backend keeps the simulated WeChat's time, as a real server and WeChat
    // share the wall clock: `POST /sim/clock` moves both (e.g. to the next morning after 10:00,
    // when the daily reconciliation fetches the bill).
    let clock: Arc<dyn Clock> = match &sim {
        Some(sim) => Arc::new(SandboxClock(Arc::clone(sim.simulator()))),
        None => Arc::new(SystemClock),
    };
    let state = wxpay_server::app::build_state(config.clone(), clock).await?;
    let admin_token = state.admin_token.clone();
    let server = wxpay_server::app::serve(state, listener).await?;
    println!("wxpay merchant backend listening on {}", server.base_url());
    println!("  mini-program API  {}/api/...", server.base_url());
    println!("  WeChat callbacks  {}/wxpay/notify, {}/wxpay/native/scan", server.base_url(), server.base_url());
    println!("  health, metrics   {}/healthz, {}/metrics", server.base_url(), server.base_url());
    println!("  database          {}", wxpay_server::config::redacted_url(&config.database.url));
    if config.server.admin_token.is_empty() && !admin_token.is_empty() {
        println!("  admin token       {admin_token}   (generated for this sandbox run; `wxpay admin token add NAME` makes lasting ones)");
    } else if admin_token.is_empty() {
        println!("  admin             named tokens only (`wxpay admin token add NAME`)");
    }
    match &sim {
        Some(sim) => println!(
            "sandbox mode: WeChat simulator on {} (merchant {} / appid {}); phone API at {}/sim/phone/...",
            sim.base_url(),
            config.wechat.mch_id,
            config.wechat.appid,
            sim.base_url()
        ),
        None => println!("talking to WeChat at {}", config.wechat.pay_base_url),
    }
    shutdown_signal().await;
    println!("shutting down: finishing in-flight requests");
    server.shutdown().await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sim(config_path: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    init_tracing(LogFormat::Text);
    let config = sim_config(config_path.as_deref())?;
    let addr = listen.or(config.simulator.listen).unwrap_or_else(|| "127.0.0.1:8090".parse().expect("valid address"));
    let sim = wxpay_sim::start(config, Arc::new(SystemClock), addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("WeChat simulator listening on {}", sim.base_url());
    println!(
        "  pay API    {}/pay/unifiedorder, /pay/orderquery, /pay/closeorder, /secapi/pay/refund, ...",
        sim.base_url()
    );
    println!("  login      {}/sns/jscode2session", sim.base_url());
    println!("  phone      {}/sim/phone/login, /sim/phone/pay, /sim/phone/scan", sim.base_url());
    println!("  sandbox merchant: appid wxd930ea5d5a258f4f, mch_id 10000100, key 192006250b4c09247ec02edce69f6a2d");
    shutdown_signal().await;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The simulator's variables: `WXPAY_SIM_<KEY>` and `WXPAY_SIM_<SECTION>__<KEY>`.
const SIM_ENV: EnvRule = EnvRule { prefix: "WXPAY_SIM_", sectioned: false, ignore: &[] };

/// The simulator's configuration, as strictly checked as the server's.
fn sim_config(path: Option<&std::path::Path>) -> Result<wxpay_sim::SimConfig, ConfigError> {
    let config: wxpay_sim::SimConfig = wxpay_server::config::load_layers(path, SIM_ENV)?;
    config.validate().map_err(|problem| ConfigError {
        key: "merchants".into(),
        problem,
        origin: path.map_or(Origin::Default, |p| Origin::File { path: p.to_owned(), line: None }),
    })?;
    Ok(config)
}
