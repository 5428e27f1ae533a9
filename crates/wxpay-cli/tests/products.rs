//! `wxpay products list|add|set|retire` on the database the configuration names, as a merchant
//! runs it: the same rules as the admin API, and every change in the audit log.

use std::path::Path;
use std::process::{Command, Output};

use wxpay_server::domain::catalogue::AuditAction;
use wxpay_server::store::{SqliteStore, Store};

fn wxpay(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
    cmd.args(args).current_dir(dir).env_clear().env("RUST_LOG", "warn").env("USER", "merchant");
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn products_are_managed_from_the_command_line_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let config = dir.path().join("wxpay.toml");
    std::fs::write(&config, format!("[database]\nurl = \"sqlite://{}\"\n", db.display())).unwrap();
    let c = config.to_str().unwrap();

    let out = wxpay(&["products", "list", "--config", c], dir.path());
    assert_eq!(ok(&out), "", "a new database has no products (no demo catalogue outside `serve`)");

    let added = ok(&wxpay(
        &["products", "add", "tea", "--name", "绿茶 Green tea", "--price-fen", "500", "--config", c],
        dir.path(),
    ));
    assert!(added.contains("tea") && added.contains("¥5.00") && added.contains("on sale"), "{added}");

    // Refusals name the option at fault and change nothing.
    for (args, option) in [
        (vec!["products", "add", "t-ea", "--name", "x", "--price-fen", "1"], "ID"),
        (vec!["products", "add", "tea2", "--name", "x", "--price-fen", "0"], "--price-fen"),
        (vec!["products", "set", "tea", "--price-fen", "100000001"], "--price-fen"),
        (vec!["products", "set", "tea", "--name", ""], "--name"),
    ] {
        let mut args = args.clone();
        args.extend(["--config", c]);
        let out = wxpay(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?} must name {option}: {stderr}");
    }
    let out = wxpay(&["products", "add", "tea", "--name", "x", "--price-fen", "1", "--config", c], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let set = ok(&wxpay(&["products", "set", "tea", "--price-fen", "650", "--config", c], dir.path()));
    assert!(set.contains("¥6.50"), "{set}");
    let retired = ok(&wxpay(&["products", "retire", "tea", "--config", c], dir.path()));
    assert!(retired.contains("retired"), "{retired}");
    let list = ok(&wxpay(&["products", "list", "--config", c], dir.path()));
    assert!(list.contains("tea") && list.contains("retired"), "history kept: {list}");
    let out = wxpay(&["products", "set", "tea", "--active", "true", "--config", c], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired"), "a retired product stays retired");

    let store = SqliteStore::connect(db.to_str().unwrap()).await.unwrap();
    let log = store.audit_events(Some("product:tea"), 10).await.unwrap();
    let actions: Vec<_> = log.iter().map(|e| (e.actor.as_str(), e.action)).collect();
    assert_eq!(
        actions,
        [
            ("cli:merchant", AuditAction::ProductRetired),
            ("cli:merchant", AuditAction::ProductUpdated),
            ("cli:merchant", AuditAction::ProductCreated)
        ]
    );
    assert_eq!(log[1].before.as_ref().unwrap()["price_fen"], 500);
    assert_eq!(log[1].after.as_ref().unwrap()["price_fen"], 650);
}
