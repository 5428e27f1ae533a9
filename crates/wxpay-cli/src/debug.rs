//! `wxpay sign` and `wxpay verify`: debugging aids for "签名错误".

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use wxpay_proto::msg::Message;
use wxpay_proto::sign::{self, ApiKey, SignError, SignType};
use wxpay_proto::{xml, Fields};

pub fn sign(key: &str, sign_type: &str, pairs: &[String]) -> ExitCode {
    let sign_type: SignType = match sign_type.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --sign-type {}", e.problem);
            return ExitCode::from(2);
        }
    };
    let mut fields = Fields::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            eprintln!("error: {pair:?} is not NAME=VALUE");
            return ExitCode::from(2);
        };
        if name.is_empty() {
            eprintln!("error: {pair:?} has an empty name");
            return ExitCode::from(2);
        }
        fields.set(name, value);
    }
    let key = ApiKey::new(key);
    warn_about_key(&key);
    eprintln!("{}&key=<API key>", sign::canonical_string(fields.iter()));
    println!("{}", sign::sign(fields.iter(), &key, sign_type));
    ExitCode::SUCCESS
}

pub fn verify(key: &str, file: Option<&Path>) -> ExitCode {
    let mut body = Vec::new();
    let read = match file {
        Some(path) => std::fs::read(path).map(|b| body = b),
        None => std::io::stdin().read_to_end(&mut body).map(|_| ()),
    };
    if let Err(e) = read {
        eprintln!("error: cannot read the message: {e}");
        return ExitCode::from(2);
    }
    let fields = match xml::parse(&body) {
        Ok(f) => f,
        Err(e) => {
            println!("invalid: the message is not a WeChat XML message: {e}");
            return ExitCode::FAILURE;
        }
    };
    let key = ApiKey::new(key);
    warn_about_key(&key);
    // A refund result notification (退款结果通知) has no sign: its req_info is encrypted instead.
    if fields.get("req_info").is_some() && fields.get("sign").is_none() {
        return explain_refund_notification(&fields, &key);
    }
    let canonical = sign::canonical_string(fields.iter());
    // Requests declare sign_type; notifications usually don't, so the length decides.
    let declared = fields.non_empty("sign_type").is_some();
    match sign::verify_notification(&fields, &key) {
        Ok(st) => {
            println!("valid ({st}{})", if declared { ", from sign_type" } else { ", from the signature length" });
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("invalid: {err}");
            if let Some(tried) = tried_algorithm(&fields, &err) {
                let expected = sign::sign(fields.iter(), &key, tried);
                println!(
                    "algorithm tried: {tried} ({})",
                    if declared { "from sign_type" } else { "from the signature length" }
                );
                println!("expected sign:   {expected}");
                println!("received sign:   {}", fields.get("sign").unwrap_or(""));
                let other = if tried == SignType::Md5 { SignType::HmacSha256 } else { SignType::Md5 };
                let other_sign = sign::sign(fields.iter(), &key, other);
                if fields.get("sign").is_some_and(|s| s.eq_ignore_ascii_case(&other_sign)) {
                    println!("hint: the message is signed with {other}, but {tried} was expected");
                }
            }
            println!("canonical string (hashed with &key=<API key> appended):");
            println!("{canonical}");
            println!("hints: the key is the 32-character API key (not the AppSecret nor the APIv3 key); every received field counts, unknown ones too; empty values are left out.");
            ExitCode::FAILURE
        }
    }
}

/// Decrypts `req_info` (AES-256-ECB, key = lower-case hex MD5 of the API key) and prints what the
/// refund notification says; the decryption is what authenticates it.
fn explain_refund_notification(fields: &Fields, key: &ApiKey) -> ExitCode {
    println!("refund result notification (退款结果通知): no sign; req_info is AES-256-ECB encrypted with MD5(API key)");
    let req_info = fields.get("req_info").unwrap_or("");
    match wxpay_proto::msg::refund::decrypt_req_info(req_info, key) {
        Ok(inner) => {
            println!(
                "valid: req_info decrypts with this key (appid {}, mch_id {})",
                fields.get("appid").unwrap_or("?"),
                fields.get("mch_id").unwrap_or("?")
            );
            for (name, value) in inner.iter() {
                println!("  {name} = {value}");
            }
            match wxpay_proto::msg::refund::RefundInfo::from_fields(&inner) {
                Ok(info) => println!(
                    "refund {} of order {}: {} fen of {} fen, {}",
                    info.out_refund_no,
                    info.out_trade_no,
                    info.refund_fee,
                    info.total_fee,
                    info.refund_status.as_str()
                ),
                Err(e) => println!("but a field is not what WeChat sends: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("invalid: {e}");
            println!(
                "hints: the key is the 32-character API key (API密钥) of the merchant in mch_id {}; \
                 req_info must be the base64 text exactly as received",
                fields.get("mch_id").unwrap_or("?")
            );
            ExitCode::FAILURE
        }
    }
}

fn tried_algorithm(fields: &Fields, err: &SignError) -> Option<SignType> {
    match err {
        SignError::Mismatch(st) => Some(*st),
        SignError::BadLength(_) => SignType::from_fields(fields).ok(),
        _ => None,
    }
}

fn warn_about_key(key: &ApiKey) {
    if !key.looks_valid() {
        eprintln!("warning: API keys are 32 letters and digits; this one is {} characters", key.expose().len());
    }
}
