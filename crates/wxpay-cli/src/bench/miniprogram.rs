//! The mini-program flow, as a phone and its mini-program would drive it: wx.login, our login,
//! create an order, get the payment parameters (unifiedorder), wx.requestPayment on the phone,
//! then poll our order until the simulator's notification has made it PAID. With several
//! instances, the login goes to one and the rest of the flow to the next, so the session, the
//! order and its notification cross instances.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::check::Expect;
use super::stats::Recorder;
use super::{fail, Flow, FlowError, Target};

/// How long a flow waits for PAID after the phone paid.
const PAID_WITHIN: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Miniprogram {
    orders: Mutex<Vec<String>>,
}

impl Miniprogram {
    pub fn expectations(&self) -> Vec<Expect> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().map(Expect::AsSimSays).collect()
    }
}

/// Polls `GET /api/orders/{no}` on instance `at` until PAID (each poll is an `api.poll` sample).
pub async fn poll_until_paid(
    t: &Target,
    rec: &mut Recorder,
    token: &str,
    order_no: &str,
    at: usize,
) -> Result<(), FlowError> {
    let started = Instant::now();
    loop {
        let v = t.call(rec, "api.poll", t.api(at).order(token, order_no)).await?;
        if v["status"] == "PAID" {
            rec.since("wait.paid", started);
            return Ok(());
        }
        if started.elapsed() > PAID_WITHIN {
            return Err(fail("wait.paid", format!("still {} after 30 s", v["status"])));
        }
        tokio::time::sleep(t.poll).await;
    }
}

/// A paid mini-program order as a user makes it: logs in on instance `login_at`, orders and gets
/// the payment parameters on `order_at` (the order number is pushed to `orders` at once), pays on
/// the phone and polls until PAID. Returns the session token, the order number and its amount.
pub async fn paid_order(
    t: &Target,
    rec: &mut Recorder,
    user: &str,
    (login_at, order_at): (usize, usize),
    orders: &Mutex<Vec<String>>,
) -> Result<(String, String, u64), FlowError> {
    let token = t.login(rec, user, login_at).await?;
    let (order_no, amount, mut pay) = t.pending_order(rec, &token, order_at).await?;
    orders.lock().unwrap_or_else(|p| p.into_inner()).push(order_no.clone());
    pay["user"] = json!(user);
    pay["appid"] = json!(t.appid);
    pay["action"] = json!("pay");
    let paid = t.json(rec, "sim.phone.pay", t.phone("pay", &pay)).await?;
    if paid["errMsg"] != "requestPayment:ok" {
        return Err(fail("sim.phone.pay", paid["errMsg"].as_str().unwrap_or("no errMsg")));
    }
    poll_until_paid(t, rec, &token, &order_no, order_at).await?;
    Ok((token, order_no, amount))
}

impl Flow for Miniprogram {
    async fn run(&self, t: &Target, vu: usize, seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        // A new user per flow: jscode2session is rate-limited per user, as on WeChat.
        let user = format!("mp-{vu}-{seq}");
        let (login_at, order_at) = (seq as usize, seq as usize + 1);
        paid_order(t, rec, &user, (login_at, order_at), &self.orders).await?;
        if t.server(login_at) != t.server(order_at) {
            t.live.crossed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}
