//! `wxpay serve` and `wxpay sim`: long-running processes that stop gracefully on Ctrl-C/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use wxpay_proto::clock::SystemClock;
use wxpay_server::config::Config;

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs an async command on a multi-threaded runtime; errors are printed, exit code 1.
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

pub async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_tracing();
    let mut config = Config::load(config_path.as_deref())?;
    // Keep notify_url pointing at us when only the listen address was changed.
    if config.server.public_url == wxpay_server::config::ServerConfig::default().public_url
        && config.server.listen != wxpay_server::config::ServerConfig::default().listen
    {
        config.server.public_url = format!("http://{}", config.server.listen);
    }
    let sim = if config.simulator.enabled {
        let sim = wxpay_sim::start(embedded_sim_config(&config), Arc::new(SystemClock), config.simulator.listen)
            .await
            .with_context(|| format!("starting the embedded simulator on {}", config.simulator.listen))?;
        config.wechat.pay_base_url = sim.base_url();
        config.wechat.sns_base_url = sim.base_url();
        Some(sim)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let state = wxpay_server::app::build_state(config.clone(), Arc::new(SystemClock)).await?;
    let admin_token = state.admin_token.clone();
    let server = wxpay_server::app::serve(state, listener).await?;
    println!("wxpay merchant backend listening on {}", server.base_url());
    println!("  mini-program API  {}/api/...", server.base_url());
    println!("  WeChat callbacks  {}/wxpay/notify, {}/wxpay/native/scan", server.base_url(), server.base_url());
    println!("  health, metrics   {}/healthz, {}/metrics", server.base_url(), server.base_url());
    println!("  database          {}", wxpay_server::config::redacted_url(&config.database.url));
    if config.server.admin_token.is_empty() {
        println!("  admin token       {admin_token}   (generated: set server.admin_token to keep one)");
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
    init_tracing();
    let config = wxpay_sim::load_config(config_path.as_deref())?;
    let addr = listen.unwrap_or_else(|| "127.0.0.1:8090".parse().expect("valid address"));
    let sim =
        wxpay_sim::start(config, Arc::new(SystemClock), addr).await.with_context(|| format!("listening on {addr}"))?;
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
