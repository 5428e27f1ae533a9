//! Config loading: defaults, TOML, `WXPAY_SIM_` overrides. One test (it sets an env variable).

use wxpay_sim::config::{SANDBOX_APPID, SANDBOX_MCH_ID};
use wxpay_sim::load_config;

#[test]
fn defaults_toml_and_env_overrides() {
    let c = load_config(None).unwrap();
    let ms = c.effective_merchants();
    assert_eq!(ms.len(), 1);
    assert_eq!((ms[0].appid.as_str(), ms[0].mch_id.as_str()), (SANDBOX_APPID, SANDBOX_MCH_ID));
    assert_eq!(c.closeorder_min_age_secs, 300);
    assert_eq!(c.time_scale, 1.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.toml");
    std::fs::write(
        &path,
        r#"
seed = 42
time_scale = 0.5
closeorder_min_age_secs = 0
default_balance_fen = 500

[[merchants]]
appid = "wx2222222222222222"
mch_id = "1900000109"
api_key = "abcdefghijklmnopqrstuvwxyz012345"
app_secret = "s"
unionid = true
scan_callback_url = "http://127.0.0.1:8080/wxpay/native/scan"

[[users]]
name = "alice"
balance_fen = 100
risky = true

[faults.global]
notify_copies = 5

[faults.orders.T1]
notify_drop = true
"#,
    )
    .unwrap();
    std::env::set_var("WXPAY_SIM_TIME_SCALE", "0.25");
    std::env::set_var("WXPAY_SIM_FAULTS__GLOBAL__NOTIFY_COPIES", "2");
    let c = load_config(Some(&path)).unwrap();
    std::env::remove_var("WXPAY_SIM_TIME_SCALE");
    std::env::remove_var("WXPAY_SIM_FAULTS__GLOBAL__NOTIFY_COPIES");
    assert_eq!(c.seed, Some(42));
    assert_eq!(c.time_scale, 0.25, "env wins over the file");
    assert_eq!(c.closeorder_min_age_secs, 0);
    assert_eq!(c.effective_merchants().len(), 2, "sandbox merchant kept by default");
    assert!(c.merchants[0].unionid);
    assert!(c.users[0].risky);
    assert_eq!(c.faults.global.notify_copies, Some(2));
    assert!(c.faults.orders["T1"].notify_drop);

    assert!(load_config(Some(&dir.path().join("missing.toml"))).is_err());
    std::fs::write(
        &path,
        "[[merchants]]\nappid = \"wxd930ea5d5a258f4f\"\nmch_id = \"2\"\napi_key = \"k\"\napp_secret = \"s\"\n",
    )
    .unwrap();
    assert!(load_config(Some(&path)).is_err(), "one appid bound to two merchants");
}

#[test]
fn delivery_slots_must_be_1_to_1024() {
    for bad in [0, 1025] {
        let c = wxpay_sim::SimConfig { notify_max_in_flight_per_host: bad, ..wxpay_sim::SimConfig::default() };
        let err = c.validate().unwrap_err();
        assert!(err.contains("notify_max_in_flight_per_host"), "{err}");
    }
    let c = wxpay_sim::SimConfig { notify_max_in_flight_per_host: 1024, ..wxpay_sim::SimConfig::default() };
    assert!(c.validate().is_ok());
}
