//! The refund flow: the mini-program payment (as in [`super::miniprogram`]), then the admin
//! refunds the whole order (`POST /admin/api/orders/{no}/refunds` with an Idempotency-Key), and
//! the flow polls the admin view until the refund result notification has made it REFUNDED. The
//! correctness check then asks, per order, that WeChat (the simulator) and we agree on the refund
//! and that exactly one `refund.succeeded` event per refund was delivered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::check::Expect;
use super::miniprogram::paid_order;
use super::stats::Recorder;
use super::{fail, Flow, FlowError, Target};

/// How long a flow waits for REFUNDED after WeChat accepted the refund.
const REFUNDED_WITHIN: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Refund {
    orders: Mutex<Vec<String>>,
}

impl Refund {
    pub fn expectations(&self) -> Vec<Expect> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().map(Expect::Refunded).collect()
    }
}

impl Flow for Refund {
    async fn run(&self, t: &Target, vu: usize, seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        let user = format!("rf-{vu}-{seq}");
        let order_at = seq as usize + 1;
        let (_, order_no, amount) = paid_order(t, rec, &user, (seq as usize, order_at), &self.orders).await?;
        // The refund goes to the next instance: the order, the refund and its notification cross.
        let refund_at = order_at + 1;
        let body = json!({"amount_fen": amount, "reason": "bench refund"});
        t.call(rec, "api.refund", t.api(refund_at).refund(&order_no, &format!("bench-{order_no}"), &body)).await?;
        let started = Instant::now();
        loop {
            let v = t.call(rec, "api.admin_order", t.api(refund_at).admin_order(&order_no)).await?;
            if v["order"]["status"] == "REFUNDED" {
                rec.since("wait.refunded", started);
                return Ok(());
            }
            if started.elapsed() > REFUNDED_WITHIN {
                return Err(fail("wait.refunded", format!("still {} after 30 s", v["order"]["status"])));
            }
            tokio::time::sleep(t.poll).await;
        }
    }
}
