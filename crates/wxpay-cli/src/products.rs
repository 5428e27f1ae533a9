//! `wxpay products list|add|set|retire`: the catalogue in the database the configuration names,
//! changed through the same rules and audit log as the admin API
//! (`wxpay_server::domain::catalogue`). The actor recorded is `cli:$USER`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use wxpay_proto::ProductId;
use wxpay_server::config::Config;
use wxpay_server::domain::catalogue::{parse_new_id, CatalogueError, ProductChange};
use wxpay_server::domain::Product;

#[derive(Subcommand)]
pub enum ProductsCommand {
    /// Every product (retired ones too, marked so).
    List,
    /// A new product: ID is 1 to 32 letters or digits (WeChat's product_id).
    Add {
        id: String,
        #[arg(long)]
        name: String,
        /// Price in fen (1 yuan = 100 fen), 1 to 100000000.
        #[arg(long, value_name = "FEN")]
        price_fen: u64,
        /// Create it off sale.
        #[arg(long)]
        inactive: bool,
    },
    /// Changes a product's name, price or sale state (orders already made keep their price).
    Set {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "FEN")]
        price_fen: Option<u64>,
        /// true: on sale; false: off sale (can be put back).
        #[arg(long)]
        active: Option<bool>,
    },
    /// Retires a product for good: no new orders or scans; its history stays.
    Retire { id: String },
}

fn actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// A catalogue refusal in the command line's words (`--price-fen` rather than `price_fen`).
fn cli_words(e: CatalogueError) -> anyhow::Error {
    match e {
        CatalogueError::Invalid { field, problem } => {
            let option = match field {
                "id" => "ID",
                "price_fen" => "--price-fen",
                "name" => "--name",
                other => other,
            };
            anyhow::anyhow!("{option}: {problem}")
        }
        other => anyhow::anyhow!("{other}"),
    }
}

fn show(p: &Product) -> String {
    let state = if p.retired {
        "retired"
    } else if p.active {
        "on sale"
    } else {
        "off sale"
    };
    format!(
        "{:<32}  {:>10}  {:<8}  {}",
        p.id.as_str(),
        format!("¥{}.{:02}", p.price.get() / 100, p.price.get() % 100),
        state,
        p.name
    )
}

pub async fn run(config_path: Option<std::path::PathBuf>, command: ProductsCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    let store = wxpay_server::app::open_store(&config).await?;
    let (id, change) = match command {
        ProductsCommand::List => {
            let products = store.list_products(false).await?;
            if products.is_empty() {
                eprintln!(
                    "the catalogue is empty: add a product with `wxpay products add ID --name NAME --price-fen FEN`"
                );
            }
            for p in &products {
                println!("{}", show(p));
            }
            return Ok(ExitCode::SUCCESS);
        }
        ProductsCommand::Add { id, name, price_fen, inactive } => {
            let parsed = parse_new_id(&id).map_err(cli_words)?;
            (parsed, ProductChange::Create { id, name, price_fen, active: !inactive })
        }
        ProductsCommand::Set { id, name, price_fen, active } => {
            if name.is_none() && price_fen.is_none() && active.is_none() {
                bail!("nothing to change: give --name, --price-fen and/or --active");
            }
            (existing_id(&id)?, ProductChange::Update { name, price_fen, active })
        }
        ProductsCommand::Retire { id } => (existing_id(&id)?, ProductChange::Retire),
    };
    let changed = store.change_product(&id, &change, &actor(), chrono::Utc::now()).await?.map_err(cli_words)?;
    println!("{}", show(&changed.after));
    Ok(ExitCode::SUCCESS)
}

fn existing_id(id: &str) -> anyhow::Result<ProductId> {
    ProductId::parse(id).map_err(|e| anyhow::anyhow!("ID: {}", e.problem))
}
