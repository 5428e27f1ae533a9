//! Builds everything from [`Config`] and runs it: store, cache, WeChat clients, HTTP server and
//! workers. Tests bind port 0 and drive the same code.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wxpay_proto::clock::Clock;
use wxpay_proto::{Fen, ProductId};

pub mod hardening;

use crate::cache::{MemoryCache, RedisCache, SessionCache};
use crate::config::Config;
use crate::domain::Product;
use crate::metrics::Metrics;
use crate::qr::ShortLinkCache;
use crate::state::{AppState, SharedState};
use crate::store::{PostgresStore, SqliteOptions, SqliteStore, Store};
use crate::wechat::WeChat;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    WeChat(#[from] crate::wechat::WeChatSetupError),
    /// A file or directory the server needs: what it is for, its path, the operating system's reason.
    #[error("cannot {action} {path}: {reason}")]
    Path { action: &'static str, path: String, reason: std::io::Error },
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store named by `database.url`.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let url = config.database.url.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let opened = async {
            let store = PostgresStore::connect(url).await?;
            store.migrate().await?;
            Ok::<_, crate::store::StoreError>(store)
        };
        let store = opened.await.map_err(|e| {
            StartError::Config(format!(
                "cannot use the PostgreSQL database {} (database.url): {e}",
                crate::config::redacted_url(url)
            ))
        })?;
        return Ok(Arc::new(store));
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let file = Path::new(path.split('?').next().unwrap_or(path));
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|reason| StartError::Path {
            action: "create the data directory (database.url)",
            path: dir.display().to_string(),
            reason,
        })?;
    }
    let options = SqliteOptions {
        synchronous_full: !config.database.sqlite_synchronous.eq_ignore_ascii_case("NORMAL"),
        ..SqliteOptions::default()
    };
    let opened = async {
        let store = SqliteStore::connect_with(path, &options).await?;
        store.migrate().await?;
        Ok::<_, crate::store::StoreError>(store)
    };
    let store = opened.await.map_err(|e| {
        StartError::Config(format!("cannot open the SQLite database {} (database.url): {e}", file.display()))
    })?;
    Ok(Arc::new(store))
}

/// Opens the cache named by `cache.url`: `memory://` (one instance) or `redis://` (shared by
/// several instances; sessions survive restarts).
pub async fn open_cache(config: &Config) -> Result<Arc<dyn SessionCache>, StartError> {
    let url = config.cache.url.as_str();
    match url {
        "" | "memory://" | "memory" => Ok(Arc::new(MemoryCache::new())),
        _ if url.starts_with("redis://") => {
            let cache = RedisCache::connect(url, &config.cache.prefix)
                .await
                .map_err(|e| StartError::Config(format!("cache.url: {e}")))?;
            Ok(Arc::new(cache))
        }
        other => Err(StartError::Config(format!("cache.url: unsupported {other:?} (memory:// or redis://)"))),
    }
}

/// The demo catalogue seeded in sandbox mode.
pub fn demo_catalogue() -> Vec<Product> {
    [
        ("cola", "可乐 Cola", 300),
        ("coffee", "美式咖啡 Americano", 1200),
        ("sandwich", "三明治 Sandwich", 1800),
        ("ticket", "活动门票 Event ticket", 9900),
    ]
    .into_iter()
    .map(|(id, name, price)| Product {
        id: ProductId::parse(id).expect("valid product id"),
        name: name.into(),
        price: Fen::new(price),
        active: true,
        retired: false,
    })
    .collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Builds the shared state from config (store, cache, WeChat clients, metrics).
pub async fn build_state(config: Config, clock: Arc<dyn Clock>) -> Result<SharedState, StartError> {
    config.validate().map_err(|e| StartError::Config(e.to_string()))?;
    let metrics = Arc::new(Metrics::default());
    let store = open_store(&config).await?;
    let cache = open_cache(&config).await?;
    let wechat = WeChat::from_config(&config, Arc::clone(&metrics))?;
    // Demo data belongs to the sandbox: a merchant talking to WeChat sells their own catalogue.
    if config.orders.seed_demo_catalogue && config.wechat_is_simulated() {
        for product in demo_catalogue() {
            if store.get_product(&product.id).await?.is_none() {
                store.upsert_product(&product).await?;
            }
        }
    }
    // The legacy single token (named `admin`): from config, or in sandbox mode generated and
    // printed at start. In production without one, only named tokens (`wxpay admin token add`) work.
    let admin_token = if !config.server.admin_token.is_empty() {
        config.server.admin_token.expose().to_owned()
    } else if config.simulator.enabled {
        random_hex(16)
    } else {
        String::new()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StartError::Config(format!("http client: {e}")))?;
    let refused_limiter = crate::state::refused_limiter(&config);
    let auth_limiters = crate::state::AuthLimiters::new(&config);
    Ok(Arc::new(AppState {
        config,
        store,
        cache,
        wechat,
        clock,
        metrics,
        admin_token,
        instance_id: format!("{}-{}", std::process::id(), random_hex(4)),
        http,
        short_links: ShortLinkCache::default(),
        outbox_wake: tokio::sync::Notify::new(),
        refused_limiter,
        auth_limiters,
    }))
}

/// A running server: its address, and a handle to stop it gracefully.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: SharedState,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    workers: Option<JoinHandle<()>>,
}

impl RunningServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, lets in-flight requests finish, stops the workers.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        if let Some(w) = self.workers {
            let _ = w.await;
        }
    }

    /// Resolves when the server stops (e.g. after a signal handled by the caller).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Serves the API on `listener` and starts the workers (when enabled in config).
pub async fn serve(state: SharedState, listener: TcpListener) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    // Handlers turned into services once, here, not for every request (the per-connection
    // make-service below only clones the shared router).
    let router = hardening::harden(crate::api::router(Arc::clone(&state))).with_state(());
    let mut server_rx = rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = server_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    let workers = state.config.workers.enabled.then(|| {
        let tick = Duration::from_millis(state.config.workers.tick_ms.max(10));
        tokio::spawn(crate::worker::run(Arc::clone(&state), tick, rx))
    });
    Ok(RunningServer { addr, state, shutdown: tx, server, workers })
}
