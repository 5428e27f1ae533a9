//! `wxpay demo`: the simulator and the server in-process on free ports, both flows run as a user
//! would (mini-program payment and a partial refund of it, then a Native mode-1 scan), each step
//! printed. Exits 0 only if both orders end paid and fulfilled (the `order.paid` event reached the
//! webhook and the order was shipped) and the refund succeeded (`refund.succeeded` delivered).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use axum::routing::post;
use serde_json::{json, Value};
use wxpay_proto::clock::SystemClock;
use wxpay_server::client::{MerchantApi, Reply};
use wxpay_server::config::{Config, Secret};

const ADMIN: &str = "demo-admin-token";

struct Demo {
    http: reqwest::Client,
    api: MerchantApi,
    sim: String,
    appid: String,
    hooks: Arc<Mutex<Vec<Value>>>,
    step: usize,
}

impl Demo {
    fn say(&mut self, what: &str) {
        self.step += 1;
        println!("[{:>2}] {what}", self.step);
    }

    /// The body of a 2xx reply to `what` (e.g. `GET /api/products`), else what went wrong.
    fn ok(what: &str, reply: Result<Reply, reqwest::Error>) -> anyhow::Result<Value> {
        let reply = reply.with_context(|| what.to_owned())?;
        if !reply.is_success() {
            bail!("{what} answered {}: {}", reply.status, reply.body);
        }
        Ok(reply.body)
    }

    /// POSTs JSON to the simulator's phone API (`path` under `/sim/phone`).
    async fn phone(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/sim/phone/{path}", self.sim);
        let resp = self.http.post(&url).json(&body).send().await.with_context(|| url.clone())?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| url.clone())?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            bail!("POST {url} answered {}: {v}", status.as_u16());
        }
        Ok(v)
    }

    /// Polls `check` until it returns Some, for at most 15 s.
    async fn until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn hook_for(&self, order_no: &str, kind: &str) -> Option<Value> {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        hooks.iter().find(|h| h["order_no"] == order_no && h["kind"] == kind).cloned()
    }

    /// The admin refunds part of a paid order: the refund is accepted, WeChat's refund result
    /// notification settles it, the order becomes PARTIALLY_REFUNDED and `refund.succeeded` goes out.
    async fn partial_refund(&mut self, order_no: &str) -> anyhow::Result<()> {
        let what = format!("GET /admin/api/orders/{order_no}");
        let order = Self::ok(&what, self.api.admin_order(order_no).await)?;
        let amount = order["order"]["amount_fen"].as_u64().ok_or_else(|| anyhow!("no amount: {order}"))?;
        let part = (amount / 2).max(1);
        let body = json!({"amount_fen": part, "reason": "one coffee was cold"});
        let refund = Self::ok(
            &format!("POST /admin/api/orders/{order_no}/refunds"),
            self.api.refund(order_no, &format!("demo-refund-{order_no}"), &body).await,
        )?;
        let out_refund_no = refund["out_refund_no"].as_str().ok_or_else(|| anyhow!("no refund: {refund}"))?.to_owned();
        self.say(&format!(
            "admin refunds {part} of {amount} fen (Idempotency-Key) -> secapi/pay/refund -> refund {out_refund_no} {}",
            refund["status"].as_str().unwrap_or("?")
        ));
        let order = self
            .until("the refund to succeed", async || {
                let v = Self::ok(&what, self.api.admin_order(order_no).await)?;
                Ok((v["order"]["status"] == "PARTIALLY_REFUNDED").then_some(v))
            })
            .await?;
        self.say(&format!(
            "refund result notification (退款结果通知) decrypted: refund SUCCESS, order PARTIALLY_REFUNDED, refunded {} fen",
            order["order"]["refunded_fen"]
        ));
        let hook = self
            .until("the refund.succeeded webhook", async || Ok(self.hook_for(order_no, "refund.succeeded")))
            .await?;
        self.say(&format!("refund event {} delivered to the merchant webhook", hook["kind"].as_str().unwrap_or("?")));
        Ok(())
    }

    /// Waits for PAID, for the webhook, ships, and checks SHIPPED.
    async fn fulfil(&mut self, order_no: &str) -> anyhow::Result<()> {
        let what = format!("GET /admin/api/orders/{order_no}");
        let order = self
            .until("the order to be PAID", async || {
                let v = Self::ok(&what, self.api.admin_order(order_no).await)?;
                Ok((v["order"]["status"] == "PAID").then_some(v))
            })
            .await?;
        self.say(&format!(
            "payment notification verified: order PAID (transaction {})",
            order["order"]["transaction_id"].as_str().unwrap_or("?")
        ));
        let hook = self.until("the order.paid webhook", async || Ok(self.hook_for(order_no, "order.paid"))).await?;
        self.say(&format!(
            "fulfilment event {} delivered to the merchant webhook",
            hook["kind"].as_str().unwrap_or("?")
        ));
        let shipped = Self::ok(&format!("POST {what}/ship"), self.api.ship(order_no).await)?;
        if shipped["fulfilment"] != "SHIPPED" {
            bail!("ship did not mark the order shipped: {shipped}");
        }
        self.say("admin marked the order shipped (发货): fulfilment SHIPPED");
        Ok(())
    }

    async fn miniprogram(&mut self) -> anyhow::Result<String> {
        println!("\n== Mini-program payment (小程序支付)");
        let code = self.phone("login", json!({"appid": self.appid, "user": "alice"})).await?;
        let code = code["code"].as_str().ok_or_else(|| anyhow!("no code from wx.login"))?.to_owned();
        self.say(&format!("wx.login on alice's phone -> code {code}"));
        let login = Self::ok("POST /api/mp/login", self.api.login(&code).await)?;
        let token = login["token"].as_str().ok_or_else(|| anyhow!("no token: {login}"))?.to_owned();
        self.say("POST /api/mp/login -> jscode2session -> openid stored, session_key cached, token issued");
        let products = Self::ok("GET /api/products", self.api.products().await)?;
        self.say(&format!("GET /api/products -> {} products", products.as_array().map_or(0, Vec::len)));
        let order = Self::ok("POST /api/orders", self.api.create_order(&token, &[("coffee", 2)]).await)?;
        let order_no = order["order_no"].as_str().ok_or_else(|| anyhow!("no order_no: {order}"))?.to_owned();
        self.say(&format!("POST /api/orders -> {order_no}, amount {} fen computed by the server", order["amount_fen"]));
        let params = Self::ok(&format!("POST /api/orders/{order_no}/pay"), self.api.pay(&token, &order_no).await)?;
        self.say(&format!(
            "POST /api/orders/{order_no}/pay -> unifiedorder JSAPI, {} signed with paySign",
            params["package"].as_str().unwrap_or("?")
        ));
        let mut pay = params.clone();
        pay["user"] = json!("alice");
        pay["appid"] = json!(self.appid);
        pay["action"] = json!("pay");
        let paid = self.phone("pay", pay).await?;
        if paid["errMsg"] != "requestPayment:ok" {
            bail!("wx.requestPayment failed: {paid}");
        }
        self.say("wx.requestPayment on the phone -> requestPayment:ok (not proof of payment yet)");
        let what = format!("GET /api/orders/{order_no}");
        self.until("the client poll to see PAID", async || {
            let v = Self::ok(&what, self.api.order(&token, &order_no).await)?;
            Ok((v["status"] == "PAID").then_some(()))
        })
        .await?;
        self.say("GET /api/orders/{no} (client poll) -> PAID");
        self.fulfil(&order_no).await?;
        self.partial_refund(&order_no).await?;
        Ok(order_no)
    }

    async fn native(&mut self) -> anyhow::Result<String> {
        println!("\n== Native QR payment, mode 1 (扫码支付模式一)");
        let link = Self::ok("GET /admin/api/products/cola/link", self.api.product_link("cola").await)?;
        let link = link.as_str().ok_or_else(|| anyhow!("no link: {link}"))?.to_owned();
        self.say(&format!("signed product link for the vending machine: {link}"));
        let scan = self.phone("scan", json!({"user": "bob", "url": link, "action": "pay"})).await?;
        let order_no = scan["out_trade_no"].as_str().ok_or_else(|| anyhow!("scan did not pay: {scan}"))?.to_owned();
        self.say(&format!("bob scans the QR: scan callback -> order {order_no} -> unifiedorder NATIVE -> signed prepay reply -> bob pays"));
        self.fulfil(&order_no).await?;
        Ok(order_no)
    }
}

async fn webhook() -> anyhow::Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let sink = hooks.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, hooks))
}

pub async fn run() -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let (hook_url, hooks) = webhook().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_url = format!("http://{}", listener.local_addr()?);
    let mut config = Config::default();
    config.server.public_url = server_url.clone();
    config.server.admin_token = Secret::new(ADMIN);
    config.database.url = format!("sqlite://{}", dir.path().join("demo.db").display());
    config.webhook.url = Some(hook_url);
    config.workers.tick_ms = 100;
    let sim = wxpay_sim::start(crate::run::embedded_sim_config(&config), Arc::new(SystemClock), "127.0.0.1:0".parse()?)
        .await?;
    config.wechat.pay_base_url = sim.base_url();
    config.wechat.sns_base_url = sim.base_url();
    let appid = config.wechat.appid.clone();
    let state = wxpay_server::app::build_state(config, Arc::new(SystemClock)).await?;
    let server = wxpay_server::app::serve(state, listener).await?;
    println!("simulator on {}, server on {}", sim.base_url(), server.base_url());

    let http = reqwest::Client::new();
    let api = MerchantApi::new(http.clone(), server_url, Some(ADMIN.into()));
    let mut demo = Demo { http, api, sim: sim.base_url(), appid, hooks, step: 0 };
    let mini = demo.miniprogram().await;
    let native = demo.native().await;
    server.shutdown().await;
    sim.shutdown().await;
    println!();
    let mut ok = true;
    for (name, result, end) in [
        ("mini-program", &mini, "paid, fulfilled and partly refunded"),
        ("native mode 1", &native, "PAID and fulfilled"),
    ] {
        match result {
            Ok(order_no) => println!("OK    {name}: order {order_no} {end}"),
            Err(e) => {
                ok = false;
                println!("FAIL  {name}: {e:#}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
