//! `wxpay qr`: the Native mode-1 link or QR image of a catalogue product, signed with the
//! configured merchant's key.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use wxpay_proto::clock::SystemClock;
use wxpay_proto::ProductId;
use wxpay_server::config::Config;

use crate::QrFormat;

pub async fn run(
    config_path: Option<PathBuf>,
    product: String,
    format: QrFormat,
    out: Option<PathBuf>,
    size: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    let id = ProductId::parse(product.as_str()).map_err(|e| anyhow::anyhow!("--product: {}", e.problem))?;
    let state = wxpay_server::app::build_state(config, Arc::new(SystemClock)).await?;
    match state.store.get_product(&id).await? {
        Some(p) if p.retired => bail!("--product: {id} is retired: it cannot be sold, so it gets no QR code"),
        Some(_) => {}
        None => {
            let known: Vec<String> =
                state.store.list_products(true).await?.into_iter().map(|p| p.id.to_string()).collect();
            bail!("--product: unknown product {id:?}; the catalogue has: {}", known.join(", "));
        }
    }
    let link = wxpay_server::qr::long_link(state.wechat.merchant(), &id, state.clock.now());
    let size = wxpay_server::qr::check_size(size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    let bytes = match format {
        QrFormat::Text => format!("{link}\n").into_bytes(),
        QrFormat::Png => wxpay_server::qr::png(&link, size)?,
        QrFormat::Svg => wxpay_server::qr::svg(&link, size)?.into_bytes(),
    };
    match out {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} ({} bytes) for {link}", path.display(), bytes.len());
        }
        None => std::io::stdout().write_all(&bytes).context("writing to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}
