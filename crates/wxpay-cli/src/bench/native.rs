//! The Native mode-1 flow: a user scans the product's QR link (the simulator runs our scan
//! callback, which creates the order and calls unifiedorder; then the user pays), and the
//! notification makes the order PAID, which the till sees through the admin API. The simulator
//! sends every scan to instance 0 (so its notifications go there too); with several instances the
//! till polls through all of them in turn.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::check::Expect;
use super::stats::Recorder;
use super::{fail, Flow, FlowError, Target};

const PAID_WITHIN: Duration = Duration::from_secs(30);

pub struct Native {
    link: String,
    orders: Mutex<Vec<String>>,
}

impl Native {
    /// Fetches the signed mode-1 link of the `cola` product once.
    pub async fn new(t: &Target) -> anyhow::Result<Native> {
        let reply = t.api(0).product_link("cola").await.context("fetching the Native link")?;
        anyhow::ensure!(reply.is_success(), "the Native link: HTTP {}: {}", reply.status, reply.body);
        let link = reply.body.as_str().context("the Native link is not text")?.to_owned();
        Ok(Native { link, orders: Mutex::new(Vec::new()) })
    }

    pub fn expectations(&self) -> Vec<Expect> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().map(Expect::AsSimSays).collect()
    }
}

impl Flow for Native {
    async fn run(&self, t: &Target, vu: usize, seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        let user = format!("nt-{vu}-{seq}");
        let scan = t
            .json(rec, "sim.phone.scan", t.phone("scan", &json!({"user": user, "url": self.link, "action": "pay"})))
            .await?;
        let Some(order_no) = scan["out_trade_no"].as_str() else {
            return Err(fail("sim.phone.scan", scan["err_code_des"].as_str().unwrap_or("did not pay")));
        };
        self.orders.lock().unwrap_or_else(|p| p.into_inner()).push(order_no.to_owned());
        let started = Instant::now();
        let api = t.api(seq as usize + 1);
        loop {
            let v = t.call(rec, "admin.poll", api.admin_order(order_no)).await?;
            if v["order"]["status"] == "PAID" {
                rec.since("wait.paid", started);
                return Ok(());
            }
            if started.elapsed() > PAID_WITHIN {
                return Err(fail("wait.paid", format!("still {} after 30 s", v["order"]["status"])));
            }
            tokio::time::sleep(t.poll).await;
        }
    }
}
