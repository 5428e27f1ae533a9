//! `wxpay refund ORDER_NO --amount FEN --reason TEXT`: starts a refund (申请退款) through a
//! running server's admin API, as an operator would from the admin UI, and prints the outcome.
//! Amounts are integer fen, as everywhere in the API (`--amount 1250` is ¥12.50).

use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::json;
use wxpay_proto::bill::fen_to_yuan;
use wxpay_proto::Fen;
use wxpay_server::client::MerchantApi;

pub struct RefundArgs {
    pub order_no: String,
    pub amount: String,
    pub reason: String,
    pub out_refund_no: Option<String>,
    pub idempotency_key: Option<String>,
    pub server: String,
    pub token: String,
}

pub async fn run(args: RefundArgs) -> anyhow::Result<ExitCode> {
    let fen = match args.amount.trim().parse::<u64>() {
        Ok(0) | Err(_) => bail!(
            "--amount: must be a whole number of fen greater than 0 (--amount 1250 refunds ¥12.50), got {:?}",
            args.amount
        ),
        Ok(n) => Fen::new(n),
    };
    if args.token.is_empty() {
        bail!("--token: the server's admin token is required (or set WXPAY_ADMIN_TOKEN)");
    }
    // A fresh key per invocation unless given: print it, so that a retry of an unanswered call
    // (`--idempotency-key KEY`) cannot refund twice.
    let key = args.idempotency_key.unwrap_or_else(|| format!("cli-{}", wxpay_proto::types::nonce()));
    let api = MerchantApi::new(reqwest::Client::new(), args.server.clone(), Some(args.token));
    let mut body = json!({"amount_fen": fen.get(), "reason": args.reason});
    if let Some(no) = &args.out_refund_no {
        body["out_refund_no"] = json!(no);
    }
    eprintln!(
        "refunding ¥{} ({} fen) of order {} (Idempotency-Key: {key})",
        fen_to_yuan(fen),
        fen.get(),
        args.order_no
    );
    let reply = api
        .refund(&args.order_no, &key, &body)
        .await
        .with_context(|| format!("--server {}: could not reach the server; is `wxpay serve` running?", args.server))?;
    println!("{}", serde_json::to_string_pretty(&reply.body)?);
    match reply.status {
        201 => {
            eprintln!("accepted by WeChat Pay: refund {} is {}", reply.body["out_refund_no"], reply.body["status"]);
            Ok(ExitCode::SUCCESS)
        }
        202 => {
            eprintln!(
                "recorded, but WeChat Pay has not answered yet: the server sends it again by itself \
                 (same out_refund_no); check with GET /admin/api/orders/{}",
                args.order_no
            );
            Ok(ExitCode::SUCCESS)
        }
        status => {
            let message = reply.body["message"].as_str().unwrap_or("");
            eprintln!("refund not made (HTTP {status} {}): {message}", reply.body["code"].as_str().unwrap_or("?"));
            Ok(ExitCode::FAILURE)
        }
    }
}
