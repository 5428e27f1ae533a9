//! `wxpay backup --to FILE`: a consistent online copy of the SQLite store, taken while the server
//! runs.
//!
//! A fresh read-only connection runs `VACUUM INTO` on a temporary file next to the target: SQLite
//! writes a compact copy of one read snapshot (in WAL mode the server's writers keep going and
//! nothing is blocked), including what is still in the WAL, which a plain file copy would miss
//! or tear. The copy is checked (`PRAGMA integrity_check`), synced, and only then renamed to FILE,
//! so FILE is either absent or a complete, checked backup. PostgreSQL is backed up with its own
//! tools (`pg_dump`, see the README).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, Row};
use wxpay_server::config::{redacted_url, Config};

/// The SQLite file a `database.url` names, as the server opens it; `None` for PostgreSQL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    Some(PathBuf::from(path.split('?').next().unwrap_or(path)))
}

pub async fn run(config_path: Option<PathBuf>, to: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    let Some(source) = sqlite_path(&config.database.url) else {
        bail!(
            "database.url is PostgreSQL ({}): `wxpay backup` copies SQLite stores only; back PostgreSQL up \
             with pg_dump (see the README, \"Backups\")",
            redacted_url(&config.database.url)
        );
    };
    let summary = backup_sqlite(&source, &to).await?;
    let orders = match summary.orders {
        Some(n) => format!("{n} orders"),
        None => "no orders table".to_owned(),
    };
    println!(
        "backup of {} written to {} ({} bytes, integrity check ok, {orders})",
        source.display(),
        to.display(),
        summary.bytes,
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
pub struct Summary {
    pub bytes: u64,
    /// Rows in the `orders` table of the copy (None if it has no such table).
    pub orders: Option<i64>,
}

/// Copies the SQLite database at `source` to `to` (which must not exist) from one consistent
/// snapshot, checks the copy, and renames it into place.
pub async fn backup_sqlite(source: &Path, to: &Path) -> anyhow::Result<Summary> {
    if !source.is_file() {
        bail!("database file {} does not exist: check database.url in the configuration", source.display());
    }
    if to.exists() {
        bail!("{} already exists: choose a new file name (a backup never overwrites a file)", to.display());
    }
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("{}: the directory does not exist; create it first", dir.display());
    }
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into());
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);

    let result = copy_and_check(source, &partial).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, to).with_context(|| format!("moving the backup into place at {}", to.display()))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(summary)
}

async fn copy_and_check(source: &Path, partial: &Path) -> anyhow::Result<Summary> {
    // A fresh connection of our own, read-only: the backup cannot change the live database. The
    // busy timeout covers a checkpoint or recovery the server may be running.
    let mut conn = SqliteConnectOptions::new()
        .filename(source)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30))
        .disable_statement_logging()
        .connect()
        .await
        .with_context(|| format!("opening {} for the backup", source.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(partial.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .with_context(|| format!("copying {} (VACUUM INTO {})", source.display(), partial.display()))?;
    conn.close().await.ok();

    // Check the copy as it will be restored.
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", partial.display()))
        .context("opening the copy")?
        .journal_mode(SqliteJournalMode::Delete)
        .disable_statement_logging();
    let mut copy = options.connect().await.with_context(|| format!("opening the copy {}", partial.display()))?;
    let verdict: Vec<String> = sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut copy)
        .await
        .context("integrity check of the copy")?
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    if verdict != ["ok"] {
        bail!("the copy failed its integrity check: {}", verdict.join("; "));
    }
    let has_orders: bool =
        sqlx::query_scalar("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'orders'")
            .fetch_one(&mut copy)
            .await
            .context("reading the copy's schema")?;
    let orders = if has_orders {
        Some(sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut copy).await.context("counting orders")?)
    } else {
        None
    };
    copy.close().await.ok();
    let file = std::fs::File::open(partial).context("reopening the copy")?;
    file.sync_all().context("syncing the copy to disk")?;
    Ok(Summary { bytes: file.metadata()?.len(), orders })
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn database_urls() {
        assert_eq!(sqlite_path("sqlite://data/wxpay.db").unwrap().to_str(), Some("data/wxpay.db"));
        assert_eq!(sqlite_path("sqlite:/var/wxpay.db?mode=rwc").unwrap().to_str(), Some("/var/wxpay.db"));
        assert_eq!(sqlite_path("./x.db").unwrap().to_str(), Some("./x.db"));
        assert!(sqlite_path("postgres://u@h/db").is_none());
        assert!(sqlite_path("postgresql://u@h/db").is_none());
    }
}
