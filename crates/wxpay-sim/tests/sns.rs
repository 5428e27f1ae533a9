//! `GET /sns/jscode2session` through `SnsClient` and raw HTTP (spec §10).

mod common;

use chrono::Duration;
use common::*;
use wxpay_proto::client::{SnsClient, SnsError};
use wxpay_proto::msg::code2session::errcode;
use wxpay_sim::config::{SANDBOX_APPID, SANDBOX_APP_SECRET};
use wxpay_sim::{MerchantConfig, SimConfig, UserConfig};

fn api_err(e: SnsError) -> (i64, String) {
    match e {
        SnsError::Api(e) => (e.errcode, e.errmsg),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn login_then_code2session_success_and_single_use() {
    let sim = start_default().await;
    let base = sim.url();
    let code = login(&base, SANDBOX_APPID, "alice").await;
    // Raw JSON: no errcode on success; session_key is base64 of 16 bytes.
    let raw = get_json(&format!(
        "{base}/sns/jscode2session?appid={SANDBOX_APPID}&secret={SANDBOX_APP_SECRET}&js_code={code}&grant_type=authorization_code"
    ))
    .await;
    assert!(raw.get("errcode").is_none(), "{raw}");
    assert!(raw.get("unionid").is_none(), "no unionid unless configured");
    assert_eq!(raw["openid"], sim.handle.openid(SANDBOX_APPID, "alice"));
    assert_eq!(raw["openid"].as_str().unwrap().len(), 28);
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.decode(raw["session_key"].as_str().unwrap()).unwrap();
    assert_eq!(key.len(), 16);

    let sns = sns_client(&base);
    let (code_no, msg) = api_err(sns.code2session(&code).await.unwrap_err());
    assert_eq!(code_no, errcode::CODE_BEEN_USED);
    assert!(msg.starts_with("code been used"));
    let (code_no, _) = api_err(sns.code2session("never-issued").await.unwrap_err());
    assert_eq!(code_no, errcode::INVALID_CODE);
}

#[tokio::test]
async fn code_expires_after_five_minutes() {
    let sim = start_default().await;
    let base = sim.url();
    let sns = sns_client(&base);
    let fresh = login(&base, SANDBOX_APPID, "bob").await;
    sim.clock.advance(Duration::seconds(299));
    assert!(sns.code2session(&fresh).await.is_ok());
    let old = login(&base, SANDBOX_APPID, "bob").await;
    sim.clock.advance(Duration::minutes(5));
    assert_eq!(api_err(sns.code2session(&old).await.unwrap_err()).0, errcode::INVALID_CODE);
}

#[tokio::test]
async fn wrong_appid_and_secret() {
    let sim = start_default().await;
    let base = sim.url();
    let code = login(&base, SANDBOX_APPID, "carol").await;
    let bad_app =
        SnsClient::new(&base, "wx0000000000000000", SANDBOX_APP_SECRET, std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(api_err(bad_app.code2session(&code).await.unwrap_err()).0, errcode::INVALID_APPID);
    let bad_secret = SnsClient::new(&base, SANDBOX_APPID, "wrong", std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(api_err(bad_secret.code2session(&code).await.unwrap_err()).0, errcode::INVALID_SECRET);
    // Still usable after those failures.
    assert!(sns_client(&base).code2session(&code).await.is_ok());
}

#[tokio::test]
async fn risky_user_rate_limit_and_unionid() {
    let second = MerchantConfig {
        appid: "wx2222222222222222".into(),
        mch_id: "1900000109".into(),
        api_key: "abcdefghijklmnopqrstuvwxyz012345".into(),
        app_secret: "second-secret".into(),
        unionid: true,
        scan_callback_url: None,
        refund_notify_url: None,
    };
    let cfg = SimConfig {
        merchants: vec![second],
        users: vec![UserConfig { name: "mallory".into(), balance_fen: None, risky: true }],
        ..config()
    };
    let sim = start(cfg).await;
    let base = sim.url();
    let sns = sns_client(&base);
    let code = login(&base, SANDBOX_APPID, "mallory").await;
    assert_eq!(api_err(sns.code2session(&code).await.unwrap_err()).0, errcode::CODE_BLOCKED);

    // unionid: same for one user across appids of the account, absent for the sandbox app.
    let other =
        SnsClient::new(&base, "wx2222222222222222", "second-secret", std::time::Duration::from_secs(5)).unwrap();
    let code = login(&base, "wx2222222222222222", "dave").await;
    let s = other.code2session(&code).await.unwrap();
    assert!(s.unionid.is_some());
    assert_ne!(s.openid, sim.handle.openid(SANDBOX_APPID, "dave"), "openids differ per appid");

    // 100 calls a minute per user are fine; the 101st is 45011; a minute later it works again.
    for i in 0..100 {
        let code = login(&base, SANDBOX_APPID, "erin").await;
        assert!(sns.code2session(&code).await.is_ok(), "call {i}");
    }
    let code = login(&base, SANDBOX_APPID, "erin").await;
    assert_eq!(api_err(sns.code2session(&code).await.unwrap_err()).0, errcode::FREQUENCY_LIMIT);
    sim.clock.advance(Duration::seconds(61));
    assert!(sns.code2session(&code).await.is_ok(), "a rate-limited call does not spend the code");
}

/// unionid: one user has the same unionid in every app of the Open Platform account (and a
/// different openid in each); different users have different unionids.
#[tokio::test]
async fn unionid_is_shared_across_appids_and_differs_between_users() {
    let merchant = |appid: &str, mch_id: &str, secret: &str| MerchantConfig {
        appid: appid.into(),
        mch_id: mch_id.into(),
        api_key: "abcdefghijklmnopqrstuvwxyz012345".into(),
        app_secret: secret.into(),
        unionid: true,
        scan_callback_url: None,
        refund_notify_url: None,
    };
    let cfg = SimConfig {
        merchants: vec![
            merchant("wx2222222222222222", "1900000109", "second-secret"),
            merchant("wx3333333333333333", "1900000110", "third-secret"),
        ],
        ..config()
    };
    let sim = start(cfg).await;
    let base = sim.url();
    let session = |appid: &'static str, secret: &'static str, user: &'static str| {
        let base = base.clone();
        async move {
            let client = SnsClient::new(&base, appid, secret, std::time::Duration::from_secs(5)).unwrap();
            let code = login(&base, appid, user).await;
            client.code2session(&code).await.unwrap()
        }
    };
    let dave_a = session("wx2222222222222222", "second-secret", "dave").await;
    let dave_b = session("wx3333333333333333", "third-secret", "dave").await;
    let erin_a = session("wx2222222222222222", "second-secret", "erin").await;
    let unionid = dave_a.unionid.clone().expect("a unionid for an app bound to the account");
    assert!(!unionid.is_empty());
    assert_eq!(dave_b.unionid.as_deref(), Some(unionid.as_str()), "same user, two appids");
    assert_ne!(dave_a.openid, dave_b.openid, "openids differ per appid");
    assert!(erin_a.unionid.is_some());
    assert_ne!(erin_a.unionid, dave_a.unionid, "different users");
}
